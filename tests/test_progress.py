"""Progress display: bars on a terminal, periodic whole lines in a log, nothing with --quiet (every command)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from tqdm import tqdm

from mixedae import progress as progress_module
from mixedae.cli import build_parser, main
from mixedae.progress import StatusLines, progress

from .data.test_shards import labelled_folder

STATUS = re.compile(r"\d+(/\d+)?(it)? \[\d\d:\d\d")  # tqdm's meter: "12/40 [00:03<00:09" or "12it [00:03"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_status_lines_are_whole_lines_at_start_every_interval_and_end():
    out, clock = io.StringIO(), Clock()
    bar = StatusLines(total=100, desc="features", file=out, interval=30, clock=clock)
    for _ in range(40):  # 40 items in 10 s: no line yet (interval 30 s)
        clock.now += 0.25
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 20  # 30 s after the first line
    bar.set_postfix(loss="1.25")
    bar.update(20)
    bar.close()
    bar.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("features:") and "0/100" in lines[0]
    # 60 of 100 after 30 s: 2.00 it/s, 40 left → 20 s remaining; by hand
    assert "60/100" in lines[1] and "60%" in lines[1] and "[00:30<00:20" in lines[1] and "2.00it/s" in lines[1]
    assert "loss=1.25" in lines[1]
    assert lines[2] == lines[1]  # close prints the final state once


def test_status_lines_iterate_and_resume_from_an_initial_count():
    out, clock = io.StringIO(), Clock()
    seen = []
    for item in StatusLines(range(5), desc="epoch", initial=0, file=out, interval=0, clock=clock):
        clock.now += 1
        seen.append(item)
    assert seen == list(range(5))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 5 + 1 and "5/5" in lines[-1]
    out = io.StringIO()
    bar = StatusLines(total=10, initial=6, file=out, interval=0, clock=clock)
    clock.now += 2
    bar.update(2)  # 2 new items in 2 s: the rate counts only those
    assert "8/10" in out.getvalue().splitlines()[-1] and "1.00it/s" in out.getvalue()


def test_progress_picks_bar_lines_or_silence(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    bar = progress(range(3), desc="x")
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress(range(3), desc="x"), StatusLines)
    assert progress(range(3), enabled=False).disable
    monkeypatch.setattr(progress_module, "_quiet", True)
    silent = progress(range(3), desc="x")
    assert isinstance(silent, tqdm) and silent.disable and list(silent) == [0, 1, 2]


def test_every_command_accepts_quiet():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [name for name, parser in sub.choices.items()
               if "--quiet" not in {s for action in parser._actions for s in action.option_strings}]
    assert not missing and len(sub.choices) >= 11


def test_bad_interval_is_one_line(monkeypatch):
    monkeypatch.setenv("MIXEDAE_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="MIXEDAE_PROGRESS_INTERVAL='soon' is not a number"):
        StatusLines(total=1, file=io.StringIO())


TINY_MODEL = ["model.name=mixedae_vit_tiny_patch4_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2",
              "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2"]
EVAL = ["data.num_samples=24", "data.num_workers=0", "data.image_size=16"]
PRETRAIN = [*TINY_MODEL, "data.image_size=16", "data.num_samples=16", "data.num_workers=0", "train.batch_size=8",
            "train.max_steps=2", "log.tensorboard=false", "log.recon_every_epochs=9"]


def commands(t: Path, run: Path) -> dict[str, tuple[list[str], bool]]:
    """Every command with tiny inputs, and whether it shows progress on these inputs."""
    return {
        "pretrain": (["pretrain", "--output-dir", f"{t}/pre", *PRETRAIN], True),
        "knn": (["knn", "--weights", str(run), "--data", "synthetic", *EVAL, "--output-dir", f"{t}/knn"], True),
        "linprobe": (["linprobe", "--weights", str(run), "--data", "synthetic", *EVAL, "epochs=2",
                      "--output-dir", f"{t}/lin"], True),
        "finetune": (["finetune", "--weights", str(run), "--data", "synthetic", *EVAL, "epochs=1", "batch_size=8",
                      "--output-dir", f"{t}/ft"], True),
        "segprobe": (["segprobe", "--weights", str(run), "--data", "synthetic", *EVAL, "epochs=1",
                      "--output-dir", f"{t}/seg"], True),
        "segfinetune": (["segfinetune", "--weights", str(run), "--data", "synthetic", *EVAL, "epochs=1",
                         "batch_size=8", "--output-dir", f"{t}/segft"], True),
        "transfer": (["transfer", "--weights", str(run), "--data", "synthetic", "--protocols", "knn", *EVAL,
                      "--output-dir", f"{t}/tr"], True),
        "export": (["export", str(run), "--out", f"{t}/exp"], False),
        "visualize": (["visualize", "recon", "--weights", str(run), "--data", "synthetic", "--out", f"{t}/v.png",
                       "--num-images", "4", *EVAL], False),
        "report": (["report", str(run), "--out", f"{t}/report.html"], False),
        "study": (["study", str(Path(__file__).parents[1] / "configs/study/smoke.yaml"), "--rows", "random init",
                   "--output-dir", f"{t}/study"], False),
        "shard": (["shard", str(run.parent / "images"), "--out", f"{t}/shards", "--shard-size", "4"], True),
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real two-step pre-training run (report needs its metrics)."""
    run = tmp_path_factory.mktemp("progress") / "run"
    assert main(["pretrain", "--output-dir", str(run), *PRETRAIN, "--quiet"]) == 0
    labelled_folder(run.parent / "images", per_class=4)  # for `shard`
    return run


@pytest.mark.parametrize("command", list(commands(Path("t"), Path("r"))))
def test_quiet_and_log_output(command, tiny_run, tmp_path, capsys, monkeypatch):
    """stderr is not a terminal here (pytest captures it): without --quiet a progress-showing command writes
    whole status lines (the interval is 0 s, so every update), with --quiet none; never a carriage return."""
    from mixedae.eval import features

    monkeypatch.setattr(features, "_MEMORY", {})  # features cached by an earlier command would skip extraction
    monkeypatch.setenv("MIXEDAE_PROGRESS_INTERVAL", "0")
    argv, shows_progress = commands(tmp_path / "loud", tiny_run)[command]
    assert main(argv) == 0
    loud = capsys.readouterr()
    assert "\r" not in loud.err
    assert bool(STATUS.search(loud.err)) == shows_progress, loud.err[-2000:]
    monkeypatch.setattr(features, "_MEMORY", {})
    argv, _ = commands(tmp_path / "quiet", tiny_run)[command]
    assert main([*argv, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "\r" not in quiet.err and not STATUS.search(quiet.err), quiet.err[-2000:]
    assert quiet.out.strip() or command in ("export", "report", "study")  # results are still printed
