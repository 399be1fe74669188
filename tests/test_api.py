"""``import mixedae``: the public names resolve lazily, each is documented, importing the package loads no
heavy library, and a notebook-style flow (create → pre-train → evaluate → export) runs through them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mixedae


@pytest.mark.parametrize("name", [n for n in mixedae.__all__ if n != "__version__"])
def test_every_public_name_resolves_and_is_documented(name):
    value = getattr(mixedae, name)
    doc = (value.__doc__ or "").strip()
    assert callable(value) and doc and not doc.startswith(f"{name}("), name  # (not a dataclass's generated one)
    assert name in dir(mixedae)


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mixedae.nope


def test_import_is_light():
    code = ("import sys, mixedae; heavy = [m for m in ('torch', 'matplotlib', 'tensorboard', 'transformers', 'timm') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_notebook_flow(tmp_path):
    assert "mixedae_vit_tiny_patch4_32" in mixedae.list_models()
    model = mixedae.create_model("mae_vit_tiny_patch4_32", depth=1)
    assert model.encoder.depth == 1
    run = tmp_path / "run"
    results = mixedae.pretrain(None, ["model.name=mae_vit_tiny_patch4_32", "model.depth=1", "model.embed_dim=32",
                                      "model.num_heads=2", "model.decoder_dim=32", "model.decoder_depth=1",
                                      "model.decoder_heads=2", "data.spec=synthetic", "data.image_size=16",
                                      "data.num_samples=32", "data.num_workers=0", "train.batch_size=8",
                                      "train.max_steps=3", "log.tensorboard=false", "log.progress=false",
                                      "log.recon_every_epochs=100", f"output_dir={run}"])
    assert results["steps"] == 3 == json.loads((run / "results.json").read_text())["steps"]
    knn = mixedae.knn(run, "synthetic", ks=[3], overrides=["data.image_size=16", "data.num_samples=40",
                                                           "progress=false"], output_dir=tmp_path / "knn")
    assert 0 <= knn["top1"] <= 100
    encoder, _ = mixedae.load_encoder(run)
    assert isinstance(encoder(torch.zeros(1, 3, 16, 16)), torch.Tensor)
    mixedae.export_encoder(encoder, tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="overrides apply to a YAML path"):
        mixedae.pretrain(mixedae.PretrainConfig(), ["train.epochs=1"])

    # figures: a Figure without a path, the saved PNG's path with one
    from matplotlib.figure import Figure

    recon = mixedae.plot_reconstruction(run, "synthetic", num_images=4, num_samples=40)
    assert isinstance(recon["figure"], Figure) and recon["metrics"]["recon"] > 0
    saved = mixedae.plot_attention(run, "synthetic", num_images=4, num_samples=40, path=tmp_path / "att.png")
    assert saved["figure"] == str(tmp_path / "att.png") and (tmp_path / "att.png").read_bytes()[:4] == b"\x89PNG"
    assert 0 <= saved["mean"] <= 1
    curves = mixedae.plot_curves([run])
    assert isinstance(curves, Figure) and any(ax.get_title() == "loss" for ax in curves.axes)
    assert mixedae.report([run], tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_study_from_python(tmp_path):
    from pathlib import Path

    plan = Path(__file__).resolve().parents[1] / "configs" / "study" / "smoke.yaml"
    results = mixedae.run_study(plan, tmp_path / "smoke", ["evaluations.common.data.num_samples=64"],
                            rows=["random init"])
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["random init"]["status"] == {"0": "done"} and "knn_cls" in rows["random init"]["mean"]
    assert rows["MixedAE"]["status"] == {"0": "pending"}  # rows= limits what runs now; the table lists all
    assert json.loads((tmp_path / "smoke" / "results.json").read_text()) == results
