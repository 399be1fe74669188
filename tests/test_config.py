"""Typed config: YAML presets load, overrides are typed, mistakes name the key."""

from pathlib import Path

import pytest

from mixedae.config import PretrainConfig, load_config, parse_overrides, to_dict
from mixedae.errors import UserError
from mixedae.models import create_model

PRESETS = sorted((Path(__file__).parents[1] / "configs" / "pretrain").glob("*.yaml"))


def test_presets_exist_for_the_seed_settings():
    names = {p.stem for p in PRESETS}
    for epochs in (300, 800, 1600):
        assert f"in1k_mae_vit_base_{epochs}ep" in names and f"in1k_mixedae_vit_base_{epochs}ep" in names
    assert {"in1k_mixedae_full_vit_base_300ep", "in1k_mixedae_vit_large_1600ep", "cifar10_mixedae_vit_tiny",
            "cifar10_mae_vit_tiny", "cifar10_mix_vit_tiny"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_names_a_buildable_model(path):
    cfg = load_config(PretrainConfig, path)
    kwargs = cfg.model.create_kwargs(cfg.data.image_size)
    # build only the small encoders; large ones are checked through their kwargs
    if "tiny" in cfg.model.name:
        model = create_model(cfg.model.name, **kwargs)
        assert model.encoder.img_size == cfg.data.image_size
    assert cfg.train.batch_size % 4 == 0


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config(PretrainConfig, None, ["train.epochs=3", "optim.blr=1e-3", "model.homologous_blocks=[0, 2]",
                                             "model.mode=full", "train.clip_grad=null"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.blr == pytest.approx(1e-3)
    assert cfg.model.homologous_blocks == [0, 2] and cfg.model.mode == "full"
    assert cfg.train.clip_grad is None
    assert to_dict(cfg)["train"]["epochs"] == 3


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(PretrainConfig, None, ["optim.blr=1"]).optim.blr == 1.0
    with pytest.raises(UserError, match="train.epochs"):
        load_config(PretrainConfig, None, ["train.epochs=2.5"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epoch=3", "unknown config key train.epoch"),
        ("trian.epochs=3", "unknown config key trian"),
        ("train.precision=fp8", "train.precision"),
        ("model.mode=half", "model.mode"),
        ("model.name=vit_huge", "model.name"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs", "section.key=value"),
        ("log.tensorboard=maybe", "log.tensorboard"),
    ],
)
def test_mistakes_name_the_key(override, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        load_config(PretrainConfig, None, [override])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(PretrainConfig, bad)


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
