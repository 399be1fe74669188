"""load_encoder on every kind of --weights, export to timm, and one-line errors for bad files."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from mixedae.cli import main
from mixedae.errors import UserError
from mixedae.export.weights import load_encoder
from mixedae.models import VisionTransformer, create_model

from .conftest import PRESET, TINY, write_run


def images(n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def reference_encoder(run) -> torch.nn.Module:
    """The encoder of the run's checkpoint, rebuilt independently of mixedae.eval."""
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    model = create_model(PRESET, **TINY)
    model.load_state_dict(ckpt["model"])
    return model.encoder.eval()


def test_load_from_run_folder_and_its_checkpoint(run_dir):
    ref = reference_encoder(run_dir)
    for weights in (run_dir, run_dir / "last.pt"):
        encoder, info = load_encoder(weights)
        assert info["kind"] == "checkpoint" and info["name"] == PRESET and info["epoch"] == 1 and info["step"] == 5
        assert info["run_dir"] == str(run_dir)
        assert info["model_args"]["embed_dim"] == 32 and info["model_args"]["img_size"] == 16
        for key, value in ref.state_dict().items():
            assert torch.equal(encoder.state_dict()[key], value), key


def test_export_loads_strictly_into_timm_with_the_same_features(run_dir, tmp_path):
    ref = reference_encoder(run_dir)
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 0 and config["global_pool"] == "token"
    assert {"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias"} <= set(config["model_args"])
    x = images()
    expected = ref.forward_features(x)
    for name in ("model.safetensors", "pytorch_model.pth"):
        # with num_classes=0 in the overlay timm loads strictly; without it timm relaxes strictness
        # (its registered cfg says 1000 classes) but every key still arrives, as the features show
        for overlay in (dict(file=str(out / name), num_classes=0), dict(file=str(out / name))):
            model = timm.create_model(config["architecture"], pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay=overlay, **config["model_args"])
            assert set(model.state_dict()) == set(ref.state_dict())
            torch.testing.assert_close(model.eval().forward_features(x), expected, atol=1e-5, rtol=0)
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    torch.testing.assert_close(local.forward_features(x), expected, atol=1e-5, rtol=0)
    # the overlay load above is strict: a file lacking one key does not load
    state = load_file(str(out / "model.safetensors"))
    del state["blocks.0.mlp.fc2.bias"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(RuntimeError, match="blocks.0.mlp.fc2.bias"):
        timm.create_model(config["architecture"], pretrained=True, num_classes=0,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "partial.safetensors"), num_classes=0),
                          **config["model_args"])
    # and the export folder itself is valid --weights
    encoder, info = load_encoder(out)
    assert info["kind"] == "export"
    torch.testing.assert_close(encoder.forward_features(x), expected, atol=1e-6, rtol=0)


def mae_style_encoder() -> VisionTransformer:
    torch.manual_seed(3)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=128, depth=2, num_heads=2, mlp_ratio=2.0).eval()


def mae_checkpoint(encoder: VisionTransformer) -> dict:
    """The layout of MAE's released files: encoder keys plus decoder / mask token / head extras under "model"."""
    extras = {"mask_token": torch.zeros(1, 1, 64), "decoder_embed.weight": torch.zeros(64, 128),
              "decoder_pos_embed": torch.zeros(1, 17, 64), "decoder_blocks.0.norm1.weight": torch.ones(64),
              "decoder_norm.weight": torch.ones(64), "decoder_pred.weight": torch.zeros(48, 64),
              "head.weight": torch.zeros(10, 128), "head.bias": torch.zeros(10)}
    return {"model": {**encoder.state_dict(), **extras}}


def test_mae_style_checkpoint_architecture_is_inferred(tmp_path):
    ref = mae_style_encoder()
    torch.save(mae_checkpoint(ref), tmp_path / "mae_pretrain.pth")
    encoder, info = load_encoder(tmp_path / "mae_pretrain.pth")
    assert info["kind"] == "state_dict"
    assert info["model_args"] == dict(img_size=16, patch_size=4, in_chans=3, embed_dim=128, depth=2, num_heads=2,
                                      mlp_ratio=2.0, qkv_bias=True)
    x = images()
    torch.testing.assert_close(encoder.forward_features(x), ref.forward_features(x), atol=1e-6, rtol=0)


def test_mae_style_checkpoint_never_drops_encoder_keys(tmp_path):
    ckpt = mae_checkpoint(mae_style_encoder())
    del ckpt["model"]["blocks.1.attn.proj.bias"]
    torch.save(ckpt, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="missing encoder keys blocks.1.attn.proj.bias"):
        load_encoder(tmp_path / "partial.pth")
    ckpt = mae_checkpoint(mae_style_encoder())
    ckpt["model"]["blocks.0.attn.q_norm.weight"] = torch.ones(64)
    torch.save(ckpt, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="unexpected keys blocks.0.attn.q_norm.weight"):
        load_encoder(tmp_path / "extra.pth")


@pytest.mark.parametrize("kind", ["truncated", "text", "list", "foreign-dict", "empty-model", "missing", "plain-dir"])
def test_bad_weights_exit_2_with_one_line(kind, run_dir, tmp_path, capsys):
    path = tmp_path / "w.pt"
    if kind == "truncated":
        data = (run_dir / "last.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "foreign-dict":
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, path)
    elif kind == "empty-model":
        torch.save({"model": {}}, path)
    elif kind == "plain-dir":
        path = tmp_path / "folder"
        path.mkdir()
    rc = main(["knn", "--weights", str(path), "--data", "synthetic", "data.num_samples=8"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("mixedae knn: error: ") and "Traceback" not in err
    assert str(path) in err


def test_damaged_run_checkpoint_names_the_mismatch(tmp_path):
    run = write_run(tmp_path / "run")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    del ckpt["model"]["encoder.norm.bias"]
    torch.save(ckpt, run / "last.pt")
    with pytest.raises(UserError, match="missing encoder keys norm.bias"):
        load_encoder(run)


def test_fine_tuned_checkpoint_is_explained(tmp_path):
    state = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2).state_dict()
    state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
    state["head.weight"], state["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    path = tmp_path / "finetuned.pth"
    torch.save({"model": state}, path)
    with pytest.raises(UserError, match="fine-tuned"):
        load_encoder(path)
