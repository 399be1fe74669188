"""The training step: a non-finite gradient is never applied and stops the run naming its step; bf16
tracks fp32; the resolved precision is what the run folder records."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
import yaml

from mixedae.amp import resolve_precision
from mixedae.distributed import DistInfo
from mixedae.engine.pretrain import Pretrainer, TrainingDiverged, pretrain
from mixedae.host_memory import glibc
from mixedae.models import create_model

from .test_pretrain import config, weights


def nan_gradient_at(trainer: Pretrainer, step: int) -> None:
    """Make the gradient of one weight NaN during optimiser step ``step`` (1-based); the loss stays finite."""
    param = trainer.model.encoder.blocks[0].mlp.fc1.weight
    param.register_hook(lambda grad: grad * float("nan") if trainer.step == step - 1 else grad)


def test_nan_gradient_is_not_applied_and_stops_the_run_naming_the_step(tmp_path):
    cfg = config(tmp_path / "run", "data.num_samples=64", "train.batch_size=8", "train.epochs=2",
                 "checkpoint.every_steps=2", "log.every_steps=100", "log.recon_every_epochs=100")
    trainer = Pretrainer(cfg, DistInfo())
    nan_gradient_at(trainer, step=3)
    with pytest.raises(TrainingDiverged) as error:
        trainer.run()
    message = str(error.value)
    assert "gradient norm became nan at step 3 (not applied)" in message and "last good checkpoint" in message
    assert "\n" not in message
    # checked before the checkpoint of step 4: last.pt still holds step 2, finite
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    # and the weights in memory never took the NaN step either (steps 4 ran on from step 2's weights)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_non_finite_step_leaves_weights_and_optimizer_state_untouched(tmp_path):
    trainer = Pretrainer(config(tmp_path / "run", "data.num_samples=32", "train.batch_size=8"), DistInfo())
    batches = iter(trainer._loader(0, 0))
    metrics = trainer.train_step([next(batches)])
    assert all(isinstance(v, torch.Tensor) for v in metrics.values())  # nothing was read on the host

    def snapshot():
        state = {f"param.{n}": p.detach().clone() for n, p in trainer.model.named_parameters()}
        for i, s in enumerate(trainer.optimizer.state.values()):
            state.update({f"state.{i}.{k}": v.clone() for k, v in s.items()})
        return state

    before = snapshot()
    nan_gradient_at(trainer, step=2)
    metrics = trainer.train_step([next(batches)])
    assert torch.isfinite(metrics["loss"]) and not torch.isfinite(metrics["grad_norm"])
    after = snapshot()
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed the weights or AdamW"
    trainer.train_step([next(batches)])  # the next finite step is applied
    assert not torch.equal(trainer.model.encoder.blocks[0].mlp.fc1.weight, before["param.encoder.blocks.0.mlp.fc1.weight"])
    assert int(trainer.first_bad) == 2


def test_bf16_loss_curve_tracks_fp32(tmp_path):
    """30 steps of the same run in fp32 and bf16 autocast. bf16 rounds to 8 significant bits (relative error
    2^-9 ≈ 0.2 % per operation); the losses are fp32 and AdamW's state stays fp32, so the curves agree to
    ~0.1 % on average and 0.5 % at worst here. Tolerance: 2 % per step and 0.5 % on average — a tenth of
    what another seed (other data order and masks) changes (up to ~18 % per step, ~5 % on average), while
    the loss falls by more than 10 %."""
    curves = {}
    for precision, seed in (("fp32", 0), ("bf16", 0), ("fp32", 1)):
        out = tmp_path / f"{precision}-{seed}"
        pretrain(config(out, "data.num_samples=128", "train.batch_size=16", "train.max_steps=30", "optim.lr=2e-3",
                        "log.every_steps=1", "log.recon_every_epochs=100", f"train.precision={precision}",
                        f"train.seed={seed}"))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        curves[precision, seed] = np.array([r["loss"] for r in rows if r.get("kind") != "epoch"])
    fp32, bf16, other_seed = curves["fp32", 0], curves["bf16", 0], curves["fp32", 1]
    assert len(fp32) == len(bf16) == 30
    relative = np.abs(bf16 - fp32) / fp32
    assert relative.max() < 0.02 and relative.mean() < 0.005, relative
    assert (np.abs(other_seed - fp32) / fp32).mean() > 10 * relative.mean()  # the tolerance is tight
    assert fp32[-5:].mean() < 0.9 * fp32[:5].mean() and bf16[-5:].mean() < 0.9 * bf16[:5].mean()


def test_run_folder_records_the_resolved_precision(tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(config(out, "data.num_samples=16", "train.batch_size=8", "train.max_steps=1", "log.recon_every_epochs=9"))
    resolved = resolve_precision("auto", torch.device("cpu"))
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"]
    assert saved == resolved and saved in ("bf16", "fp32")
    assert f"precision {resolved} (auto: " in capsys.readouterr().err
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["train"]["precision"] == resolved


def test_compiled_training_keeps_checkpoint_keys(tmp_path, monkeypatch):
    # dynamo's eager backend: the same wrapping as inductor without its minutes of C++ compilation on CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    out = tmp_path / "run"
    common = ["data.num_samples=16", "train.batch_size=8", "train.max_steps=2", "log.recon_every_epochs=9",
              "train.precision=fp32", "model.name=mae_vit_tiny_patch4_32"]
    pretrain(config(out, *common, "train.compile=true"))
    eager = tmp_path / "eager"
    pretrain(config(eager, *common))
    compiled = weights(out / "last.pt")
    assert list(compiled) == list(weights(eager / "last.pt"))  # no _orig_mod. prefixes
    for key, value in compiled.items():
        torch.testing.assert_close(value, weights(eager / "last.pt")[key], rtol=0, atol=1e-4, msg=key)




@pytest.mark.slow
@pytest.mark.parametrize("name", ["mix_vit_tiny_patch4_32", "mixedae_vit_tiny_patch4_32"])
def test_inductor_gradients_equal_eager(name):
    # torch 2.14's inductor returned these models' loss with NO gradient (naive mixing) or none for the
    # decoder (MixedAE) while their forward detached the metrics: a detached metric and `1.0 * recon` came
    # back as one tensor object (see MixedAE.forward). One real inductor step against eager.
    torch.manual_seed(0)
    model = create_model(name, depth=1, decoder_depth=1)
    imgs = torch.randn(8, 3, 32, 32)
    noise = torch.rand(8 // model.group_size, model.num_patches)

    def grads(forward):
        model.zero_grad(set_to_none=True)
        loss, out = forward(imgs, noise=noise)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    eager_loss, eager = grads(model)
    compiled_loss, compiled = grads(torch.compile(model, backend="inductor"))
    torch.testing.assert_close(compiled_loss, eager_loss)
    missing = [n for n, g in compiled.items() if g is None and eager[n] is not None]
    assert not missing, f"no compiled gradient for {missing[:5]}"
    for n, g in eager.items():
        if g is not None:
            torch.testing.assert_close(compiled[n], g, rtol=1e-3, atol=1e-5, msg=n)


def test_start_line_says_whether_freed_memory_is_kept(tmp_path, capsys):
    for keep, says in ((True, "freed memory kept" if glibc() else "needs glibc"), (False, "the C library's default")):
        pretrain(config(tmp_path / str(keep), "data.num_samples=8", "train.batch_size=8", "train.max_steps=1",
                        "log.recon_every_epochs=9", f"train.keep_freed_memory={str(keep).lower()}"))
        assert f"| host memory: {says}" in capsys.readouterr().err
