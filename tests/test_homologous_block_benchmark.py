"""benchmarks/homologous_block.py: the five block variants, the selection timing and its JSON."""

import json

import pytest
import torch

import mixedae.models.vit as vit

from .test_step_time_benchmark import load_benchmark

KTH_LARGEST = vit.kth_largest


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("homologous_block")


def test_table_times_every_variant_and_the_selection_only_where_there_is_one(bench, tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--preset", "tiny_patch4_32", "--batch-size", "8", "--rounds", "3", "--warmup", "1",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == list(bench.VARIANTS)
    assert rows[0]["ratio"] == 1.0 and all(r["rounds"] == 3 and r["median_ms"] > 0 for r in rows)
    assert rows[0]["selection_ms"] is None and all(r["selection_ms"] > 0 for r in rows[1:])
    assert vit.kth_largest is KTH_LARGEST  # restored after the run


def test_variants_select_as_named(bench, monkeypatch):
    """homologous / no-accuracy / sdpa use the exact K-th largest logit, free-selection the row mean, ordinary
    none; only sdpa (and ordinary) call the fused kernel, sdpa with a mask; the selection and the attention's
    implementation are swapped only inside the step."""
    sdpa_calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: sdpa_calls.append(kw.get("attn_mask") is not None) or fused(*a, **kw))
    variants = {v.name: v for v in bench.build("tiny_patch4_32", 8)}
    for name, v in variants.items():
        calls = []
        with bench.selection(v.select, calls):
            v.block(v.x, **v.kwargs)
        assert vit.kth_largest is KTH_LARGEST and len(calls) == (0 if name == "ordinary" else 1)
        sdpa_calls.clear()
        v.step(timed=True)
        assert v.block.attn.homologous_impl == "auto"  # restored
        assert sdpa_calls == {"ordinary": [False], "sdpa": [True]}.get(name, []), name
    rows = torch.randn(5, 16)
    assert torch.equal(variants["homologous"].select(rows, 4), rows.topk(4, -1).values[:, -1:])
    assert torch.equal(variants["free-selection"].select(rows, 4), rows.mean(-1, keepdim=True))
    assert "token_src" in variants["homologous"].kwargs and "token_src" not in variants["no-accuracy"].kwargs


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "6"], "--batch-size 6 is not a positive multiple of the group size 4"),
    (["--batch-size", "0"], "--batch-size 0 is not a positive multiple of the group size 4"),
    (["--preset", "nope"], "unknown model preset 'mixedae_vit_nope'"),
    (["--rounds", "0"], "--rounds must be >= 1"),
])
def test_bad_arguments_end_in_one_line_and_exit_2(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--preset", "tiny_patch4_32", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
