"""One self-contained HTML page comparing pre-training runs (loss curves, final numbers, evaluations,
latest reconstructions), images embedded as base64 PNG so the file can be mailed or archived alone.

A run folder is read as the engine writes it: ``config.yaml``, ``metrics.jsonl`` (one JSON object a
line; a cut last line and missing keys are tolerated), ``results.json``, ``recon/epoch-<n>.png`` and any
evaluation results ``eval/**/*.json``. Only ``metrics.jsonl`` is required.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text
from .figures import finish, png_bytes

CURVE_KEYS = ("loss", "recon", "homocon", "sampling_acc", "lr", "img_per_s")
FINAL_KEYS = ("loss", "recon", "homocon", "sampling_acc")
EVAL_DEPTH = 3  # nesting levels of an eval JSON flattened into table columns


@dataclass
class Run:
    """What the report needs from one run folder."""

    name: str
    path: Path
    records: list[dict[str, Any]]  # per-step metrics records (epoch summaries if there are none)
    config_text: str = ""
    model: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    evals: dict[str, float] = field(default_factory=dict)  # "<file>/<key.path>" → number
    recon: Optional[Path] = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping blank, cut or non-object lines."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


SETTINGS = ("config", "weights")  # sections of results.json that describe the run, not its results


def _numbers(obj: Any, prefix: str, depth: int) -> dict[str, float]:
    """Finite numeric leaves of nested dicts as ``{"a.b": value}`` (lists, strings and the settings sections
    skipped)."""
    if isinstance(obj, bool):
        return {}
    if isinstance(obj, (int, float)):
        return {prefix: float(obj)} if math.isfinite(obj) else {}
    if isinstance(obj, dict) and depth > 0:
        out: dict[str, float] = {}
        for key, value in obj.items():
            if key not in SETTINGS:
                out.update(_numbers(value, f"{prefix}.{key}" if prefix else str(key), depth - 1))
        return out
    return {}


def _epoch_of(path: Path) -> int:
    match = re.fullmatch(r"epoch-(\d+)\.png", path.name)
    return int(match.group(1)) if match else -1


def load_run(path: Path, name: str) -> Run:
    """Read one run folder; a missing folder or one without metrics records is a UserError."""
    if not path.is_dir():
        raise UserError(f"run folder {path} does not exist; pass pre-training run folders (the --output-dir of "
                        "mixedae pretrain)")
    metrics = path / "metrics.jsonl"
    records = read_jsonl(metrics) if metrics.is_file() else []
    if not records:
        raise UserError(f"run folder {path} has no metrics (metrics.jsonl missing or empty); pass a folder written by "
                        "mixedae pretrain that has run at least one logging step")
    steps = [r for r in records if r.get("kind") != "epoch"]
    run = Run(name, path, steps or records)
    config = path / "config.yaml"
    if config.is_file():
        run.config_text = config.read_text(errors="replace")
        try:
            run.model = str(((yaml.safe_load(run.config_text) or {}).get("model") or {}).get("name", ""))
        except (yaml.YAMLError, AttributeError):
            pass
    results = _read_json(path / "results.json")
    run.results = results if isinstance(results, dict) else {}
    run.model = run.model or str(run.results.get("model", ""))
    for file in sorted((path / "eval").glob("**/*.json")):
        label = file.relative_to(path / "eval").with_suffix("").as_posix()
        run.evals.update(_numbers(_read_json(file), label, EVAL_DEPTH))
    recons = sorted((path / "recon").glob("epoch-*.png"), key=_epoch_of)
    run.recon = recons[-1] if recons else None
    return run


def summary(run: Run) -> dict[str, Any]:
    """Final numbers of a run: results.json where present, else derived from the metrics records."""
    last = {k: v for r in run.records for k, v in r.items()}  # latest value of every key
    final = run.results.get("final") if isinstance(run.results.get("final"), dict) else {}
    speeds = [r["img_per_s"] for r in run.records if isinstance(r.get("img_per_s"), (int, float))]
    row: dict[str, Any] = {
        "model": run.model or None,
        "steps": run.results.get("steps", last.get("step")),
        "epochs": run.results.get("epochs_completed", last.get("epoch")),
        "wall_time_s": run.results.get("wall_time_s"),
        "img_per_s": run.results.get("img_per_s") or (statistics.median(speeds) if speeds else None),
    }
    for key in FINAL_KEYS:
        row[key] = final.get(key, last.get(key))
    return row


def _x_axis(records: list[dict[str, Any]]) -> str:
    return "epoch" if all(isinstance(r.get("epoch"), (int, float)) for r in records) else "step"


def curves_figure(runs: Sequence[Run]):
    """One panel per metric in :data:`CURVE_KEYS` that any run logged, one line per run (a Figure)."""
    from matplotlib.figure import Figure

    keys = [k for k in CURVE_KEYS if any(k in r for run in runs for r in run.records)]
    cols = min(3, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), dpi=100)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    xnames = [_x_axis(run.records) for run in runs]
    for ax, key in zip(axes, keys):
        for run, xname in zip(runs, xnames):
            points = [(r[xname], r[key]) for r in run.records
                      if isinstance(r.get(key), (int, float)) and isinstance(r.get(xname), (int, float))]
            if points:
                ax.plot(*zip(*points), label=run.name, linewidth=1.2, marker="o" if len(points) < 3 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(" / ".join(sorted(set(xnames))), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def plot_curves(run_dirs: Sequence[str | Path], path: Optional[str | Path] = None):
    """The training curves of pre-training runs (loss, recon, HomoCon, sampling accuracy, ... over epochs), as
    in ``mixedae report``: saved as PNG at ``path`` (returns the path) or the Figure when ``path`` is None."""
    paths = [Path(d) for d in run_dirs]
    return finish(curves_figure([load_run(p, name) for p, name in zip(paths, _names(paths))]), path)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right;font-size:.9em}th{background:#eee}
td:first-child{text-align:left}img{max-width:100%}pre{background:#f6f6f6;padding:.5em;font-size:.8em}"""


def render_html(runs: Sequence[Run], summaries: Sequence[dict[str, Any]]) -> str:
    """The report page for loaded runs and their :func:`summary` rows."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mixedae report</title>"
             f"<style>{STYLE}</style></head><body><h1>Pre-training runs</h1>"]
    header = ["run", *summaries[0]]
    parts.append("<h2>Final numbers</h2>" + _table(header, [[run.name, *s.values()] for run, s in zip(runs, summaries)]))
    eval_keys = sorted({k for run in runs for k in run.evals})
    if eval_keys:
        parts.append("<h2>Evaluations</h2>" + _table(["run", *eval_keys],
                                                     [[run.name, *(run.evals.get(k) for k in eval_keys)] for run in runs]))
    parts.append("<h2>Training curves</h2>" + _img(png_bytes(curves_figure(runs)), "training curves"))
    parts.append("<h2>Reconstructions (latest epoch)</h2>")
    for run in runs:
        parts.append(f"<h3>{html.escape(run.name)}</h3>")
        parts.append(_img(run.recon.read_bytes(), f"{run.name} {run.recon.name}") + f"<p>{html.escape(run.recon.name)}</p>"
                     if run.recon else "<p>no reconstruction figure in recon/</p>")
    parts.append("<h2>Configs</h2>")
    for run in runs:
        parts.append(f"<details><summary>{html.escape(run.name)} — {html.escape(str(run.path))}</summary>"
                     f"<pre>{html.escape(run.config_text or 'no config.yaml')}</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _names(paths: Sequence[Path]) -> list[str]:
    """Folder names, or the full paths when two runs share a folder name."""
    names = [p.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def build_report(run_dirs: Sequence[str | Path], out_html: str | Path) -> Path:
    """Write the comparison page to ``out_html`` and its numbers to ``out_html`` with suffix ``.json``.

    The JSON holds, per run, ``name``, ``path``, ``summary`` (the final-numbers row) and ``eval``
    (flattened evaluation numbers). Returns the HTML path.
    """
    if not run_dirs:
        raise UserError("no run folders given; pass one or more pre-training run folders")
    paths = [Path(d) for d in run_dirs]
    runs = [load_run(p, name) for p, name in zip(paths, _names(paths))]
    summaries = [summary(run) for run in runs]
    out = Path(out_html)
    atomic_write_text(render_html(runs, summaries), out)
    atomic_write_json({"runs": [{"name": run.name, "path": str(run.path), "summary": s, "eval": run.evals}
                                for run, s in zip(runs, summaries)]}, out.with_suffix(".json"))
    return out
