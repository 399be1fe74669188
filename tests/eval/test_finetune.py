"""Fine-tuning: MAE's model surgery and optimiser groups, weights that learn, and early stops agreed by all ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mixedae.cli import main
from mixedae.eval import finetune
from mixedae.eval.common import load_eval_config
from mixedae.eval.finetune import FinetuneConfig, finetune_model, finetune_optimizer
from mixedae.models import VisionTransformer
from mixedae.schedule import set_lr

from .conftest import DATA, write_split_folder
from .test_weights import reference_encoder


def encoder_with_a_trained_norm(depth: int = 1) -> VisionTransformer:
    """An encoder whose final norm is not at its init (so a copy and a fresh LayerNorm differ)."""
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2)
    with torch.no_grad():
        encoder.norm.weight.uniform_(0.5, 1.5)
        encoder.norm.bias.uniform_(-0.5, 0.5)
    return encoder


def test_fc_norm_starts_fresh_and_the_final_norm_is_dropped_as_in_mae():
    encoder = encoder_with_a_trained_norm()
    model = finetune_model(encoder, num_classes=5, drop_path=0.1)
    assert isinstance(model.norm, torch.nn.Identity)
    assert torch.equal(model.fc_norm.weight, torch.ones(32)) and torch.equal(model.fc_norm.bias, torch.zeros(32))
    assert model.fc_norm.eps == 1e-6
    state = model.state_dict()
    for key, value in encoder.state_dict().items():
        if not key.startswith("norm."):
            assert torch.equal(state[key], value), key
    copied = finetune_model(encoder, num_classes=5, drop_path=0.1, copy_norm=True)
    assert torch.equal(copied.fc_norm.weight, encoder.norm.weight)
    assert torch.equal(copied.fc_norm.bias, encoder.norm.bias)
    assert load_eval_config(FinetuneConfig, "synthetic", ["copy_norm=true"]).copy_norm is True
    assert FinetuneConfig().copy_norm is False


def test_layer_decay_and_weight_decay_groups_follow_mae():
    depth, decay, wd = 3, 0.5, 0.05
    model = finetune_model(encoder_with_a_trained_norm(depth), num_classes=5, drop_path=0.0)
    cfg = FinetuneConfig(layer_decay=decay, weight_decay=wd)
    optimizer = finetune_optimizer(model, cfg, base_lr=1.0)
    set_lr(optimizer, 1.0)  # what the schedule does every step
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = [n for n, _ in model.named_parameters()]
    assert len(group_of) == len(names)  # every parameter is optimised, once
    for name, param in model.named_parameters():
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
            layer_id = 0
        elif name.startswith("blocks."):
            layer_id = int(name.split(".")[1]) + 1
        else:
            assert name.startswith(("fc_norm.", "head.")), name
            layer_id = depth + 1
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(decay ** (depth + 1 - layer_id)), name
        no_decay = param.ndim <= 1 or name in ("cls_token", "pos_embed")
        assert group["weight_decay"] == (0.0 if no_decay else wd), name
    # hand-computed values for this depth: embeddings 0.5^4, block 0 0.5^3, block 2 0.5^1, head 1
    assert group_of[id(model.pos_embed)]["lr"] == 0.0625 and group_of[id(model.head.weight)]["lr"] == 1.0
    assert group_of[id(model.blocks[0].attn.qkv.weight)]["lr"] == 0.125
    assert group_of[id(model.blocks[2].mlp.fc1.weight)]["lr"] == 0.5


def test_one_epoch_moves_every_weight(run_dir, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--weights", str(run_dir), "--data", "synthetic", *DATA, "epochs=1", "batch_size=8",
                 "warmup_epochs=0.5", "lr=0.01", "--output-dir", str(out)]) == 0
    tuned = torch.load(out / "finetuned.pth", weights_only=True)["model"]
    for key, value in reference_encoder(run_dir).state_dict().items():
        if not key.startswith("norm."):
            assert not torch.equal(tuned[key], value), f"{key} did not move"
    assert tuned["head.weight"].abs().max() > 1e-3  # trunc-normal(std 2e-5, cut at ±2 std) at the start
    assert not torch.equal(tuned["fc_norm.weight"], torch.ones_like(tuned["fc_norm.weight"]))
    data = json.loads((out / "results.json").read_text())["data"]
    assert data["unreadable"]["train_replaced_loads"] == 0 and "replaced" in data["unreadable"]["policy"]


def poison_criterion(monkeypatch) -> None:
    make = finetune._criterion

    def poisoned(cfg, mixup):
        criterion = make(cfg, mixup)
        return lambda logits, targets: criterion(logits, targets) * float("nan")

    monkeypatch.setattr(finetune, "_criterion", poisoned)


def test_non_finite_loss_stops_before_the_update_with_one_line(run_dir, tmp_path, monkeypatch, capsys):
    poison_criterion(monkeypatch)
    steps = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1))
    rc = main(["finetune", "--weights", str(run_dir), "--data", "synthetic", *DATA, "epochs=1", "batch_size=8",
               "--output-dir", str(tmp_path / "ft")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "non-finite at epoch 1 step 1 on 1 of 1 process(es)" in err and not steps
    assert not (tmp_path / "ft" / "results.json").exists()


# ---------------------------------------------------------------------------------------------
# two gloo ranks where only one of them meets the problem
# ---------------------------------------------------------------------------------------------
RANK_SCRIPT = textwrap.dedent("""
    import os, sys
    from mixedae.cli import main
    from mixedae.errors import UserError
    from mixedae.eval import finetune

    mine = os.environ["TEST_ON_RANK"] == os.environ["RANK"]
    if mine and os.environ["TEST_INJECT"] == "nan":
        make = finetune._criterion
        finetune._criterion = lambda cfg, mixup: (lambda crit: lambda x, y: crit(x, y) * float("nan"))(make(cfg, mixup))
    if mine and os.environ["TEST_INJECT"] == "setup":
        def load_encoder(weights):
            raise UserError(f"{weights} cannot be read on this node")
        finetune.load_encoder = load_encoder
    sys.exit(main(sys.argv[1:]))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(tmp_path: Path, argv: list[str], inject: str, on_rank: int = 1, timeout: float = 120):
    """Start ranks 0 and 1 of a gloo group (as torchrun would); returns ``[(exit code, stderr)]`` per rank."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "TEST_INJECT": inject, "TEST_ON_RANK": str(on_rank)}
        procs.append(subprocess.Popen([sys.executable, str(script), *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        errs = [p.communicate(timeout=timeout)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs)]
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank was still running after {timeout} s: the ranks did not agree to stop")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("inject", ["nan", "setup", "unreadable-val"])
def test_one_rank_in_trouble_stops_both_with_one_line(run_dir, tmp_path, inject):
    # val item 1 (sorted: a/0, a/1, b/0, ...) falls in rank 1's slice
    data = "synthetic"
    if inject == "unreadable-val":
        data = str(write_split_folder(tmp_path / "data", {"val": ["a/1.png"]}))
    argv = ["finetune", "--weights", str(run_dir), "--data", data, *DATA, "epochs=1", "batch_size=4",
            "--output-dir", str(tmp_path / "ft")]
    ranks = run_two_ranks(tmp_path, argv, inject)
    expected = {"nan": "non-finite at epoch 1 step 1 on 1 of 2 process(es)", "setup": "cannot be read on this node",
                "unreadable-val": "1 val image(s) cannot be read (first: "}[inject]
    for rank, (code, err) in enumerate(ranks):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (rank, code, err[-3000:])
        assert lines[0].startswith("mixedae finetune: error: ") and expected in lines[0], (rank, lines[0])
    assert not (tmp_path / "ft" / "results.json").exists()
