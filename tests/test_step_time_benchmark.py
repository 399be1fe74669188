"""benchmarks/step_time.py: precision choice, FLOP count (vs a hand count), MFU and its JSON."""

import importlib.util
import json
from pathlib import Path

import numpy as np
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
    FLOPs of the naive-mixing model (ordinary attention) in an unlogged step (the selection itself is not a
    matmul), and in a logged step (``with_metrics``) plus, exactly, the sampling accuracy's ``[T, T] @ [T, G]``
    matmul per sample and head (no gradient)."""
    device = torch.device("cpu")
    batch = 8
    mixed = {with_metrics: step_time.Trainee("mixedae_vit_tiny_patch4_32", batch,
                                             {**TINY, "homocon_weight": 0.0, "segment_embed": "none"}, device,
                                             "fp32", with_metrics=with_metrics)
             for with_metrics in (False, True)}
    naive = step_time.Trainee("mix_vit_tiny_patch4_32", batch, TINY, device, "fp32")
    assert mixed[True].model.homologous_blocks == (0,) and naive.model.homologous_blocks == ()
    g, tokens, heads = mixed[True].model.group_size, 1 + mixed[True].model.num_patches, TINY["num_heads"]
    accuracy_matmul = 2 * (batch // g) * heads * tokens * tokens * g
    assert naive.flops_per_image() > 0
    assert mixed[False].flops_per_image() == naive.flops_per_image()
    assert mixed[True].flops_per_image() * batch == naive.flops_per_image() * batch + accuracy_matmul


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
    assert rows[0]["time_ratio"] == 1.0 and rows[0]["flop_ratio"] == 1.0 and rows[0]["paired_ratio_90"] == [1.0, 1.0]
    mae, mixedae = rows
    lo, hi = mixedae["paired_ratio_90"]
    assert lo <= mixedae["paired_ratio"] <= hi and len(mixedae["times_s"]) == 2
    assert mixedae["paired_ratio"] == pytest.approx(float(np.median(np.divide(mixedae["times_s"], mae["times_s"]))))
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


def test_the_paired_ratio_is_the_median_of_per_round_ratios_and_cancels_a_slow_phase(step_time):
    rng = np.random.default_rng(0)
    drift = np.where(np.arange(40) < 20, 1.0, 1.6)  # the machine slows down for the second half of the run
    ref = rng.uniform(12.0, 13.0, 40) * drift
    times = ref * rng.normal(1.04, 0.02, 40)
    paired, lo, hi = step_time.paired_ratio(list(times), list(ref))
    assert paired == pytest.approx(float(np.median(times / ref)), rel=1e-12)
    # the median of 40 ratios with sd 0.02 has a standard error of about 1.25 · 0.02 / √40 = 0.004: ±1.645 of it
    assert lo < paired < hi and 0.006 < hi - lo < 0.02
    # a slow phase hitting both models' steps of a round does not move it (the ratio of medians it does)
    calm, *_ = step_time.paired_ratio(list(times / drift), list(ref / drift))
    assert calm == pytest.approx(paired, rel=1e-12)
    constant = step_time.paired_ratio([1.02 * x for x in ref], list(ref))
    assert constant == pytest.approx((1.02, 1.02, 1.02), rel=1e-12)
    with pytest.raises(ValueError):  # rounds missing for one model
        step_time.paired_ratio(list(times[:-1]), list(ref))
