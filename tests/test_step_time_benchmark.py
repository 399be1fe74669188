"""benchmarks/step_time.py: precision choice, FLOP count (vs a hand count), MFU and its JSON."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
TINY = dict(img_size=16, depth=1, embed_dim=32, num_heads=2, decoder_dim=32, decoder_heads=2)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` (a script, not part of the package) loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def step_time():
    return load_benchmark("step_time")


def test_training_flops_of_a_decoder_block_match_a_hand_count(step_time):
    """One more decoder block adds, per image, 3 × (24·T·D² + 4·T²·D): forward qkv 6TD², proj 2TD²,
    fc1 8TD², fc2 8TD², q·kᵀ and A·V 2T²D each; backward twice the forward (gradients of inputs and
    weights). T = 1 + L decoder tokens, D = decoder width."""
    flops = {}
    for depth in (1, 2):
        t = step_time.Trainee("mae_vit_tiny_patch4_32", 4, {**TINY, "decoder_depth": depth},
                              torch.device("cpu"), "fp32")
        flops[depth] = t.flops_per_image()
    tokens, width = 1 + 16, 32
    assert flops[2] - flops[1] == 3 * (24 * tokens * width**2 + 4 * tokens**2 * width)


def test_flops_count_homologous_attention(step_time):
    """The eager top-k path is counted too: MixedAE with homologous attention in its one block has the
    FLOPs of the naive-mixing model (ordinary attention) plus, exactly, the sampling accuracy's
    ``[T, T] @ [T, G]`` matmul per sample and head (no gradient) — the selection itself is not a matmul."""
    device = torch.device("cpu")
    batch = 8
    mixed = step_time.Trainee("mixedae_vit_tiny_patch4_32", batch, {**TINY, "homocon_weight": 0.0,
                                                                    "segment_embed": "none"}, device, "fp32")
    naive = step_time.Trainee("mix_vit_tiny_patch4_32", batch, TINY, device, "fp32")
    assert mixed.model.homologous_blocks == (0,) and naive.model.homologous_blocks == ()
    g, tokens, heads = mixed.model.group_size, 1 + mixed.model.num_patches, TINY["num_heads"]
    accuracy_matmul = 2 * (batch // g) * heads * tokens * tokens * g
    assert naive.flops_per_image() > 0
    assert mixed.flops_per_image() * batch == naive.flops_per_image() * batch + accuracy_matmul


def test_table_json_flops_and_mfu(step_time, tmp_path):
    out = tmp_path / "t.json"
    argv = ["--steps", "2", "--warmup", "0", "--batch-size", "8", "--precision", "bf16", "--peak-size", "256",
            "--json", str(out), *(f"--set={k}={v}" for k, v in TINY.items())]
    assert step_time.main(argv) == 0
    saved = json.loads(out.read_text())
    assert saved["meta"]["precision"] == "bf16" and saved["meta"]["peak_flops"] > 0
    rows = saved["rows"]
    assert [r["model"] for r in rows] == ["mae_vit_tiny_patch4_32", "mixedae_vit_tiny_patch4_32"]
    for r in rows:
        assert r["gflops_per_img"] > 0 and r["steps"] == 2 and r["compile_s"] is None
        expect = r["gflops_per_img"] * 1e9 * r["batch_size"] / r["median_s"] / saved["meta"]["peak_flops"]
        assert r["mfu"] == pytest.approx(expect, rel=1e-12)
    assert rows[0]["time_ratio"] == 1.0 and rows[0]["flop_ratio"] == 1.0
    assert saved["meta"]["peak_gemms"] == 2 + 5  # one per round, five after


def test_the_peak_gemm_is_timed_every_round_and_the_fastest_one_counts(step_time):
    """The peak is measured among the steps, so a slow phase of the machine is seen by both."""
    trainee = step_time.Trainee("mae_vit_tiny_patch4_32", 4, TINY, torch.device("cpu"), "fp32")
    gemm = step_time.PeakGemm("fp32", torch.device("cpu"), 64, repeats=2)
    step_time.measure([trainee], steps=3, warmup=1, peak=gemm)
    assert len(trainee.times) == 3 and len(gemm.times) == 4 + 2
    gemm.times[:] = [4.0, 2.0, 8.0]
    assert gemm.flops == 2 * 64**3 / 2.0


def test_fp16_needs_cuda(step_time, capsys):
    with pytest.raises(SystemExit) as exit_info:
        step_time.main(["--precision", "fp16", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "fp16 needs a CUDA device" in err


def test_a_batch_that_is_not_a_positive_multiple_of_the_group_ends_in_one_line(step_time, capsys):
    with pytest.raises(SystemExit) as exit_info:
        step_time.main(["--batch-size", "0", "--steps", "1", "--warmup", "0",
                        *(f"--set={k}={v}" for k, v in TINY.items())])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--batch-size 0 is not a positive multiple of the group size" in err
