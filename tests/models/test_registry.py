"""Presets of docs/cli.md, their sizes, and the argument checks of create_model / the model classes."""

import pytest
import torch

from mixedae.models import MaskedAutoencoder, MixedAutoencoder, create_model, method_of, preset_kwargs, preset_names

from ._helpers import small_model

TIMM_SIZES = {  # timm's ViT widths / depths / heads
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
CLI_PRESETS = [
    (f"{m}_vit_{s}_patch16", m, s, 224, 16) for m in ("mae", "mix", "mixedae") for s in ("tiny", "small", "base", "large")
] + [(f"{m}_vit_{s}_patch4_32", m, s, 32, 4) for m in ("mae", "mix", "mixedae") for s in ("tiny", "small")]


def test_all_cli_presets_exist():
    names = preset_names()
    assert len(CLI_PRESETS) == 18
    missing = [p[0] for p in CLI_PRESETS if p[0] not in names]
    assert not missing


@pytest.mark.parametrize("name,method,size,img,patch", CLI_PRESETS)
def test_preset_kwargs(name, method, size, img, patch):
    kw = preset_kwargs(name)
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"]) == TIMM_SIZES[size]
    assert (kw["img_size"], kw["patch_size"]) == (img, patch)
    assert kw["decoder_dim"] % kw["decoder_heads"] == 0
    assert method_of(name) == method
    if method == "mix":  # the naive baseline: no homologous recognition
        assert kw["homologous_blocks"] == "none" and kw["segment_embed"] == "none" and kw["homocon_weight"] == 0
    else:
        assert "homocon_weight" not in kw or kw["homocon_weight"] > 0


def test_tiny_patch4_32_builds_at_full_size():
    model = create_model("mixedae_vit_tiny_patch4_32")
    enc = model.encoder
    assert (enc.embed_dim, enc.depth, enc.num_heads, enc.num_patches) == (192, 12, 3, 64)
    assert model.group_size == 4 and model.topk == 16 and model.mode == "compose"
    assert model.homologous_blocks == tuple(range(12)) and model.segment_embed_place == "decoder"
    assert model.tau == 0.25 and model.homocon_weight == 1.0 and model.projector is None


def test_classes_and_method_defaults():
    assert isinstance(small_model("mae"), MaskedAutoencoder)
    mae = small_model("mae")
    assert mae.visible_ratio == 0.25 and mae.num_visible == 4  # r·L of L = 16
    mix = small_model("mix")
    assert isinstance(mix, MixedAutoencoder)
    assert mix.homologous_blocks == () and mix.homocon_weight == 0 and mix.segment_embed_place == "none"
    assert not any("segment" in n for n, _ in mix.named_parameters())
    mixed = small_model("mixedae")
    assert isinstance(mixed, MixedAutoencoder) and mixed.homologous_blocks == (0, 1)


def test_overrides_apply_and_none_is_ignored():
    model = small_model("mixedae", mode="full", tau=0.5, topk=None, projector_dim=None)
    assert model.mode == "full" and model.tau == 0.5 and model.topk == 4 and model.projector is None
    assert model.encoder.embed_dim == 32 and model.decoder.pred.out_features == 48


# ------------------------------------------------------------------------------------------------
# bad arguments → ValueError with a clear message
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit_tiny_patch16", "mae_vit_huge_patch16", "mixedae_vit_base_patch4_32", ""])
def test_unknown_preset(name):
    with pytest.raises(ValueError, match="unknown model preset"):
        create_model(name)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset_kwargs(name)


@pytest.mark.parametrize("option,value", [("mode", "full"), ("topk", 2), ("tau", 0.1), ("segment_embed", "encoder"),
                                          ("homologous_blocks", "all"), ("projector_dim", 8), ("homocon_weight", 1.0)])
def test_mixing_option_on_mae_preset(option, value):
    with pytest.raises(ValueError, match=f"{option}.*mae"):
        small_model("mae", **{option: value})


def test_typo_option():
    with pytest.raises(ValueError, match="mix_ration"):
        small_model("mixedae", mix_ration=0.25)


@pytest.mark.parametrize("method", ["mix", "mixedae"])
@pytest.mark.parametrize("ratio", [0.3, 0.2, 0.75, 1.0, 0.0, 1 / 3, 1 / 16])
def test_ratio_not_one_over_g(method, ratio):
    with pytest.raises(ValueError, match="mixing ratio"):
        small_model(method, mix_ratio=ratio)


@pytest.mark.parametrize("method", ["mae", "mix", "mixedae"])
def test_image_not_divisible_by_patch(method):
    with pytest.raises(ValueError, match="not divisible by patch size"):
        small_model(method, img_size=18)


@pytest.mark.parametrize("method", ["mix", "mixedae"])
@pytest.mark.parametrize("img,patch,ratio", [(12, 4, 0.5), (20, 4, 0.25), (12, 4, 0.25), (24, 4, 0.125)])
def test_rl_not_integer(method, img, patch, ratio):
    """L = 9, 25, 9, 36 patches are not divisible by G = 2, 4, 4, 8."""
    with pytest.raises(ValueError, match="not an integer"):
        small_model(method, img_size=img, patch_size=patch, mix_ratio=ratio)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(mode="fulll"), "mode"),
        (dict(mode="Compose"), "mode"),
        (dict(segment_embed="both"), "segment_embed"),
        (dict(segment_embed=None, homologous_blocks="some"), "homologous_blocks"),
        (dict(homologous_blocks=[2]), "homologous_blocks"),
        (dict(homologous_blocks=[0, -3]), "homologous_blocks"),
        (dict(topk=0), "topk"),
        (dict(topk=-1), "topk"),
        (dict(topk=17), "topk"),
        (dict(tau=0.0), "tau"),
    ],
)
def test_bad_mixing_options(kw, match):
    with pytest.raises(ValueError, match=match):
        small_model("mixedae", **kw)


def test_mae_bad_visible_fraction():
    with pytest.raises(ValueError, match="mix_ratio"):
        small_model("mae", mix_ratio=1.0)


def test_batch_not_divisible_message_names_the_fix():
    model = small_model("mix", mix_ratio=0.125, depth=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(12, 3, 16, 16))
