"""mixedae export --format timm|hf|mmseg|detectron2 [--image-size N].

hf is checked with the real transformers library. mmsegmentation (needs mmcv, which does not build
for this torch) and detectron2 (not on the package index) cannot be installed here: their key names
and shapes are checked against lists written from their source (commits named below), and the
exported tensors are run through a reference forward pass written from that source's semantics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from mixedae.cli import main
from mixedae.export.weights import load_encoder
from mixedae.models import VisionTransformer

from .conftest import write_run
from .test_weights import images, reference_encoder

D, HEADS, P, MLP = 32, 2, 4, 128  # the tiny run of conftest: embed 32, 2 heads, patch 4, 16 px, depth 1


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run whose encoder has non-trivial values everywhere (norm weights, biases, cls token), so that a
    swapped or dropped key shows in the features."""
    run = write_run(tmp_path_factory.mktemp("runs") / "trained")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    g = torch.Generator().manual_seed(0)
    for key, value in ckpt["model"].items():
        if key.startswith("encoder.") and key != "encoder.pos_embed":
            ckpt["model"][key] = value + 0.1 * torch.randn(value.shape, generator=g)
    torch.save(ckpt, run / "last.pt")
    return run


def export(run, out, *args):
    assert main(["export", str(run), "--out", str(out), *args]) == 0
    return out


def fresh_encoder_at(run, size: int) -> VisionTransformer:
    """The run's encoder rebuilt at ``size`` px by the constructor (its own sin-cos table), not resampled."""
    ref = reference_encoder(run)
    enc = VisionTransformer(img_size=size, patch_size=P, embed_dim=D, depth=1, num_heads=HEADS).eval()
    enc.load_state_dict({**ref.state_dict(), "pos_embed": enc.pos_embed}, strict=True)
    return enc


# ------------------------------------------------------------------------------------------------
# timm at another size
# ------------------------------------------------------------------------------------------------
def test_timm_export_at_another_image_size(trained_run, tmp_path, capsys):
    out = export(trained_run, tmp_path / "timm24", "--image-size", "24")
    assert "img 24" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["img_size"] == 24 and config["pretrained_cfg"]["input_size"] == [3, 24, 24]
    x = images(size=24)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    expected = fresh_encoder_at(trained_run, 24).forward_features(x)
    torch.testing.assert_close(model.forward_features(x), expected, atol=1e-5, rtol=0)
    encoder, _ = load_encoder(out)  # and it reads back as --weights at its new size
    assert encoder.img_size == 24


@pytest.mark.parametrize("args,message", [(["--format", "onnx"], "invalid choice"),
                                          (["--image-size", "18"], "multiple of the encoder's patch size 4")])
def test_bad_export_arguments_exit_2(trained_run, tmp_path, capsys, args, message):
    try:
        rc = main(["export", str(trained_run), "--out", str(tmp_path / "x"), *args])
    except SystemExit as e:  # argparse's own one-line usage error
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers (the real library)
# ------------------------------------------------------------------------------------------------
def test_hf_export_loads_in_transformers_with_the_same_features(trained_run, tmp_path, monkeypatch):
    from transformers import AutoImageProcessor, ViTModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder: nothing may be downloaded
    out = export(trained_run, tmp_path / "hf", "--format", "hf")
    model, info = ViTModel.from_pretrained(str(out), output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    ref, x = reference_encoder(trained_run), images()
    with torch.no_grad():
        hf = model.eval()(pixel_values=x)
        torch.testing.assert_close(hf.last_hidden_state, ref.forward_features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(hf.pooler_output, ref(x), atol=1e-5, rtol=0)  # identity pooler = cls feature
    assert model.config.layer_norm_eps == 1e-6 and model.config.hidden_act == "gelu"
    _, info = ViTModel.from_pretrained(str(out), add_pooling_layer=False, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == {"pooler.dense.weight", "pooler.dense.bias"}
    processor = AutoImageProcessor.from_pretrained(str(out))
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and processor.size["height"] == 16


def test_hf_export_at_another_size(trained_run, tmp_path, monkeypatch):
    from transformers import ViTModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = export(trained_run, tmp_path / "hf24", "--format", "hf", "--image-size", "24")
    model = ViTModel.from_pretrained(str(out)).eval()
    assert model.config.image_size == 24
    x = images(size=24)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).last_hidden_state,
                                   fresh_encoder_at(trained_run, 24).forward_features(x), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# mmsegmentation's MAE backbone
# ------------------------------------------------------------------------------------------------
# state_dict() of mmseg.models.backbones.MAE(img_size=16, patch_size=4, embed_dims=32, num_layers=1,
# num_heads=2, mlp_ratio=4, init_values=1.0, final_norm=True), written from mmsegmentation v1.2.2
# (PyPI wheel mmsegmentation-1.2.2; git tag v1.2.2 of open-mmlab/mmsegmentation):
# mmseg/models/backbones/mae.py (MAE, MAETransformerEncoderLayer, MAEAttention), beit.py (BEiT,
# BEiTAttention, BEiTTransformerEncoderLayer: gamma_1/gamma_2, relative position table of
# (2·4 − 1)² + 3 = 52 rows and index buffer of 17 × 17), vit.py (TransformerEncoderLayer: ln1, attn,
# ln2, ffn = mmcv FFN layers.0.0 / layers.1), utils/embed.py (PatchEmbed.projection).
MMSEG_MAE_KEYS = {
    "cls_token": (1, 1, 32),
    "pos_embed": (1, 17, 32),
    "patch_embed.projection.weight": (32, 3, 4, 4),
    "patch_embed.projection.bias": (32,),
    "layers.0.gamma_1": (32,),
    "layers.0.gamma_2": (32,),
    "layers.0.ln1.weight": (32,),
    "layers.0.ln1.bias": (32,),
    "layers.0.attn.relative_position_bias_table": (52, 2),
    "layers.0.attn.relative_position_index": (17, 17),
    "layers.0.attn.qkv.weight": (96, 32),
    "layers.0.attn.qkv.bias": (96,),
    "layers.0.attn.proj.weight": (32, 32),
    "layers.0.attn.proj.bias": (32,),
    "layers.0.ln2.weight": (32,),
    "layers.0.ln2.bias": (32,),
    "layers.0.ffn.layers.0.0.weight": (128, 32),
    "layers.0.ffn.layers.0.0.bias": (128,),
    "layers.0.ffn.layers.1.weight": (32, 128),
    "layers.0.ffn.layers.1.bias": (32,),
    "ln1.weight": (32,),
    "ln1.bias": (32,),
}
MMSEG_LEFT_TO_INIT = {"layers.0.attn.relative_position_bias_table", "layers.0.attn.relative_position_index"}


def mmseg_mae_forward(state: dict, imgs: torch.Tensor) -> torch.Tensor:
    """MAE.forward of mmseg 1.2.2 (final_norm=True, relative position bias at its zero init), all tokens."""
    x = F.conv2d(imgs, state["patch_embed.projection.weight"], state["patch_embed.projection.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], dim=1) + state["pos_embed"]
    n, t, _ = x.shape
    ln = lambda y, name: F.layer_norm(y, (D,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)  # noqa: E731
    h = ln(x, "layers.0.ln1")
    qkv = F.linear(h, state["layers.0.attn.qkv.weight"], state["layers.0.attn.qkv.bias"])
    q, k, v = qkv.reshape(n, t, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
    attn = ((q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = F.linear((attn @ v).transpose(1, 2).reshape(n, t, D), state["layers.0.attn.proj.weight"],
                 state["layers.0.attn.proj.bias"])
    x = x + state["layers.0.gamma_1"] * y
    h = F.gelu(F.linear(ln(x, "layers.0.ln2"), state["layers.0.ffn.layers.0.0.weight"],
                        state["layers.0.ffn.layers.0.0.bias"]))
    x = x + state["layers.0.gamma_2"] * F.linear(h, state["layers.0.ffn.layers.1.weight"],
                                                 state["layers.0.ffn.layers.1.bias"])
    return ln(x, "ln1")


def test_mmseg_export_has_the_mae_backbone_keys_and_computes_our_encoder(trained_run, tmp_path):
    out = export(trained_run, tmp_path / "mmseg", "--format", "mmseg")
    ckpt = torch.load(out / "backbone.pth", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: s for k, s in MMSEG_MAE_KEYS.items() if k not in MMSEG_LEFT_TO_INIT}
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(mmseg_mae_forward(state, x), reference_encoder(trained_run).forward_features(x),
                                   atol=1e-5, rtol=0)
    config = json.loads((out / "export.json").read_text())
    assert config["backbone"] == {"type": "MAE", "img_size": [16, 16], "patch_size": 4, "in_channels": 3,
                                  "embed_dims": 32, "num_layers": 1, "num_heads": 2, "mlp_ratio": 4,
                                  "init_values": 1.0, "norm_cfg": {"type": "LN", "eps": 1e-6}}


def test_mmseg_export_without_qkv_bias_adds_a_zero_bias(tmp_path):
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=16, patch_size=P, embed_dim=D, depth=1, num_heads=HEADS, qkv_bias=False).eval()
    torch.save({"model": enc.state_dict()}, tmp_path / "nobias.pth")
    out = export(tmp_path / "nobias.pth", tmp_path / "mmseg", "--format", "mmseg", "--image-size", "24")
    state = torch.load(out / "backbone.pth", weights_only=True)["state_dict"]
    assert torch.count_nonzero(state["layers.0.attn.qkv.bias"]) == 0 and state["pos_embed"].shape == (1, 37, D)
    x = images(size=24)
    with torch.no_grad():
        torch.testing.assert_close(mmseg_mae_forward(state, x), enc.with_image_size(24).forward_features(x),
                                   atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# detectron2 / ViTDet
# ------------------------------------------------------------------------------------------------
# state_dict() keys of the backbone of GeneralizedRCNN(backbone=SimpleFeaturePyramid(net=ViT(img_size=16,
# patch_size=4, embed_dim=32, depth=1, num_heads=2, mlp_ratio=4, qkv_bias=True, use_rel_pos=False,
# pretrain_img_size=16, pretrain_use_cls_token=True), ...)), restricted to backbone.net.*, written from
# facebookresearch/detectron2 @ 02b5c4e295e990042a714712c21dc79b731e8833:
# detectron2/modeling/backbone/vit.py (ViT, Block, Attention: qkv, proj; timm Mlp fc1/fc2; pos_embed of
# (16/4)² + 1 rows; no cls token, no final norm) and detectron2/modeling/backbone/utils.py (PatchEmbed.proj).
# With use_rel_pos=True (the recipe) each block also has attn.rel_pos_h / attn.rel_pos_w, zero-initialised.
DETECTRON2_VIT_KEYS = {
    "backbone.net.pos_embed": (1, 17, 32),
    "backbone.net.patch_embed.proj.weight": (32, 3, 4, 4),
    "backbone.net.patch_embed.proj.bias": (32,),
    "backbone.net.blocks.0.norm1.weight": (32,),
    "backbone.net.blocks.0.norm1.bias": (32,),
    "backbone.net.blocks.0.attn.qkv.weight": (96, 32),
    "backbone.net.blocks.0.attn.qkv.bias": (96,),
    "backbone.net.blocks.0.attn.proj.weight": (32, 32),
    "backbone.net.blocks.0.attn.proj.bias": (32,),
    "backbone.net.blocks.0.norm2.weight": (32,),
    "backbone.net.blocks.0.norm2.bias": (32,),
    "backbone.net.blocks.0.mlp.fc1.weight": (128, 32),
    "backbone.net.blocks.0.mlp.fc1.bias": (128,),
    "backbone.net.blocks.0.mlp.fc2.weight": (32, 128),
    "backbone.net.blocks.0.mlp.fc2.bias": (32,),
}


def vitdet_forward(state: dict, imgs: torch.Tensor) -> torch.Tensor:
    """ViT.forward of detectron2 (global attention, no rel-pos): patch tokens [N, h·w, D], no cls token."""
    net = {k[len("backbone.net."):]: v for k, v in state.items()}
    x = F.conv2d(imgs, net["patch_embed.proj.weight"], net["patch_embed.proj.bias"], stride=P).permute(0, 2, 3, 1)
    n, h, w, _ = x.shape
    x = (x + net["pos_embed"][:, 1:].reshape(1, h, w, D)).reshape(n, h * w, D)  # get_abs_pos: cls row dropped
    ln = lambda y, name: F.layer_norm(y, (D,), net[f"{name}.weight"], net[f"{name}.bias"], eps=1e-6)  # noqa: E731
    qkv = F.linear(ln(x, "blocks.0.norm1"), net["blocks.0.attn.qkv.weight"], net["blocks.0.attn.qkv.bias"])
    q, k, v = qkv.reshape(n, h * w, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
    attn = ((q * (D // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(n, h * w, D), net["blocks.0.attn.proj.weight"],
                     net["blocks.0.attn.proj.bias"])
    hidden = F.gelu(F.linear(ln(x, "blocks.0.norm2"), net["blocks.0.mlp.fc1.weight"], net["blocks.0.mlp.fc1.bias"]))
    return x + F.linear(hidden, net["blocks.0.mlp.fc2.weight"], net["blocks.0.mlp.fc2.bias"])


@pytest.mark.parametrize("size", [16, 24])
def test_detectron2_export_has_vitdet_keys_and_its_pos_embed(trained_run, tmp_path, size):
    out = export(trained_run, tmp_path / "d2", "--format", "detectron2", "--image-size", str(size))
    state = torch.load(out / "backbone.pth", map_location="cpu", weights_only=True)["model"]
    grid = size // P
    expected = {**DETECTRON2_VIT_KEYS, "backbone.net.pos_embed": (1, 1 + grid * grid, 32)}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # ViTDet drops the cls token: its features are our blocks run on the patch tokens alone
    enc, x = fresh_encoder_at(trained_run, size), images(size=size)
    with torch.no_grad():
        tokens = enc.embed_patches(x)
        for block in enc.blocks:
            tokens = block(tokens)[0]
        torch.testing.assert_close(vitdet_forward(state, x), tokens, atol=1e-5, rtol=0)
    config = json.loads((out / "export.json").read_text())
    assert config["backbone"]["pretrain_img_size"] == size and config["backbone"]["pretrain_use_cls_token"]


@pytest.mark.parametrize("fmt", ["hf", "mmseg", "detectron2"])
def test_foreign_exports_are_not_weights(trained_run, tmp_path, capsys, fmt):
    out = export(trained_run, tmp_path / fmt, "--format", fmt)
    rc = main(["knn", "--weights", str(out), "--data", "synthetic", "data.num_samples=8"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "timm export" in err


def test_cli_lists_every_export_format():
    from mixedae.commands.evaluate import EXPORT_FORMATS
    from mixedae.export import FORMATS

    assert EXPORT_FORMATS == FORMATS
