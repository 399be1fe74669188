"""A study's numbers: per (row, seed) from the run folders, mean ± std per row, and the three
outputs ``results.json``, ``results.md`` and ``curves.png``.

Per seed (missing where a stage is not done):
    knn_cls, knn_patch   k-NN top-1 % (cls token / mean patch token) at the headline k
    linprobe             linear-probe top-1 %
    seg_miou, seg_pixel_acc   segmentation probe on the synthetic scenes, %
    attn_objects         cls attention on object pixels ÷ object area (1 = uniform)
    patch_cos            mean within-image cosine between patch tokens (collapse indicator)
    recon, homocon, sampling_acc   the run's final logged values (results.json ``final``)
    img_per_s            pre-training images/s: median of the logged windows in metrics.jsonl
    train_s, wall_s      the study's wall time for pre-training, and for pre-training + evaluations

Per row: the mean and the sample standard deviation (``n − 1``; none for one seed) over its done
seeds, and the step-time ratio to the speed reference row (its mean img/s ÷ the row's).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from ..eval.random_init import STAMP as RANDOM_STAMP
from ..io import atomic_write, atomic_write_json, atomic_write_text
from ..models import method_of
from ..viz.report import read_jsonl
from .plan import Job, Plan, flatten, seeds_of
from .reference import reference, reference_markdown

# key, column title, format
QUALITY = (
    ("knn_cls", "k-NN cls %", "{:.2f}"),
    ("knn_patch", "k-NN patch-mean %", "{:.2f}"),
    ("linprobe", "linear probe %", "{:.2f}"),
    ("seg_miou", "seg probe mIoU %", "{:.2f}"),
    ("seg_pixel_acc", "seg probe pixel acc %", "{:.2f}"),
    ("attn_objects", "attention on objects (× uniform)", "{:.3f}"),
    ("patch_cos", "patch cosine", "{:.3f}"),
    ("recon", "final recon", "{:.4f}"),
    ("homocon", "final HomoCon", "{:.3f}"),
    ("sampling_acc", "sampling acc", "{:.3f}"),
)
COST = (
    ("img_per_s", "pre-training img/s", "{:.0f}"),
    ("train_s", "pre-training wall s", "{:.0f}"),
    ("wall_s", "train + eval wall s", "{:.0f}"),
)
CURVES = ("loss", "recon", "homocon", "sampling_acc")
EVAL_FIELDS = {  # protocol → {metric: path in its results.json}; "@k" = the headline k
    "knn": {"knn_cls": ("cls", "top1", "@k"), "knn_patch": ("patch_mean", "top1", "@k")},
    "linprobe": {"linprobe": ("top1",)},
    "segprobe": {"seg_miou": ("mIoU",), "seg_pixel_acc": ("pixel_acc",)},
    "attention": {"attn_objects": ("ratio",)},
    "patch_cosine": {"patch_cos": ("mean",)},
}
SPEED_NOTE = ("img/s counts source images per second of pre-training wall time, data loading included (the median "
              "of the logged windows); it depends on the machine being otherwise quiet, so the step-time ratio is "
              "only meaningful for runs made on the same, quiet machine.")


def read_json(path: Path) -> Optional[dict]:
    """A JSON object from ``path``, or None when missing, cut or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _dig(data: dict, path: Sequence[str]) -> Optional[float]:
    node: Any = data
    for key in path:
        if key == "@k":
            key = str((data.get("headline") or {}).get("k"))
        node = node.get(key) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def seed_metrics(job: Job) -> tuple[str, dict[str, float]]:
    """``(status, metrics)`` of one (row, seed); status is ``done``, ``pending`` or ``diverged``."""
    run = job.run_dir
    stamp = read_json(run / "study.json") or {}
    if stamp.get("status") == "diverged":
        return "diverged", {}
    metrics: dict[str, float] = {}
    results = read_json(run / "results.json")
    trained = (run / RANDOM_STAMP).is_file() if job.row.random_init else results is not None
    if results is not None:
        records = _records(run)
        # results.json "final" is the last step's numbers, which the last metrics record also holds (a run
        # resumed from a last.pt at its final step does no step and leaves "final" empty)
        final = results.get("final") or (records[-1] if records else {})
        metrics.update({k: float(final[k]) for k in ("recon", "homocon", "sampling_acc") if k in final})
        speeds = [r["img_per_s"] for r in records if isinstance(r.get("img_per_s"), (int, float))]
        ips = statistics.median(speeds) if speeds else results.get("img_per_s")
        if ips:
            metrics["img_per_s"] = float(ips)
    for protocol, fields in EVAL_FIELDS.items():
        data = read_json(run / "eval" / protocol / "results.json")
        if data is not None and (run / "eval" / protocol / "study.json").is_file():
            metrics.update({k: v for k, path in fields.items() if (v := _dig(data, path)) is not None})
    wall = stamp.get("wall_s") or {}
    if "train" in wall and not job.row.random_init:
        metrics["train_s"] = float(wall["train"])
    if wall:
        metrics["wall_s"] = float(sum(wall.values()))
    return ("done" if trained else "pending"), metrics


def _records(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    return [r for r in read_jsonl(path) if r.get("kind") != "epoch"] if path.is_file() else []


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (``n − 1``; None below two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def cell(mean: Optional[float], std: Optional[float], fmt: str) -> str:
    if mean is None:
        return "—"
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if std is not None else "")


def speed_reference(plan: Plan, jobs: Sequence[Job]) -> Optional[str]:
    """The plan's ``speed_reference``, else the first trained row with an MAE preset."""
    if plan.speed_reference:
        return plan.speed_reference
    return next((j.row.name for j in jobs if not j.row.random_init and method_of(j.cfg.model.name) == "mae"), None)


def collect(plan: Plan, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One entry per row: per-seed metrics and statuses, mean / std / n per metric, step-time ratio."""
    rows = []
    for row in plan.rows:
        mine = [j for j in jobs if j.row is row]
        per_seed, status = {}, {}
        for job in mine:
            status[str(job.seed)], per_seed[str(job.seed)] = seed_metrics(job)
        keys = [k for k, _, _ in QUALITY + COST]
        entry: dict[str, Any] = {"name": row.name, "random_init": row.random_init, "model": mine[0].cfg.model.name,
                                 "overrides": flatten(row.overrides), "seeds": seeds_of(plan, row),
                                 "status": status, "per_seed": per_seed, "mean": {}, "std": {}, "n": {}}
        for key in keys:
            values = [m[key] for s, m in per_seed.items() if key in m and status[s] == "done"]
            if values:
                entry["mean"][key], entry["std"][key] = mean_std(values)
                entry["n"][key] = len(values)
        walls = [m["wall_s"] for m in per_seed.values() if "wall_s" in m]
        entry["row_wall_s"] = sum(walls) if walls else None
        rows.append(entry)
    ref = speed_reference(plan, jobs)
    ref_ips = next((r["mean"].get("img_per_s") for r in rows if r["name"] == ref), None)
    for r in rows:
        ips = r["mean"].get("img_per_s")
        r["step_time_ratio"] = ref_ips / ips if ref_ips and ips else None
    return rows


# ------------------------------------------------------------------------------------------------
def _seeds_cell(entry: dict[str, Any]) -> str:
    status = entry["status"]
    done = sum(s == "done" for s in status.values())
    text = f"{done}/{len(status)}"
    diverged = [s for s, v in status.items() if v == "diverged"]
    return text + (f" (diverged: seed {', '.join(diverged)})" if diverged else "")


def markdown(plan: Plan, rows: list[dict[str, Any]], ref: Optional[str], out_dir: Path, machine: dict,
             command: Optional[str] = None) -> str:
    budget = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in flatten(plan.budget).items())
    ev = plan.evaluations
    lines = [f"# Study `{plan.name}`", "",
             f"- plan: `{plan.path}` · output: `{out_dir}`" + (f" · command: `{command}`" if command else ""),
             f"- pre-training data: `{plan.data}`"
             + (" (the train split of the classification subset below)" if plan.pretrain_data != "data" else "")
             + f" · budget (every row): {budget or '(the configs own)'}",
             f"- classification data: `{ev.classification_data or plan.data}` (train subset: {ev.train_subset or 'all'}, "
             f"val subset: {ev.val_subset or 'all'}) · segmentation / attention data: `{ev.segmentation_data}`",
             f"- machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs ({machine.get('processor')}), "
             f"GPU: {machine.get('cuda') or 'none'}, torch {machine.get('torch')}",
             "", "## Results (mean ± sample std over seeds)", ""]
    header = ["row", "seeds done", *(title for _, title, _ in QUALITY)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [cell(r["mean"].get(k), r["std"].get(k), fmt) for k, _, fmt in QUALITY]
        lines.append("| " + " | ".join([r["name"], _seeds_cell(r), *cells]) + " |")
    lines += ["", f"## Cost (step-time ratio: img/s of `{ref or '—'}` ÷ the row's)", ""]
    header = ["row", *(title for _, title, _ in COST[:1]), "step time ÷ reference", *(t for _, t, _ in COST[1:]),
              "row total wall s (all seeds)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratio = f"{r['step_time_ratio']:.2f}" if r["step_time_ratio"] else "—"
        first = cell(r["mean"].get("img_per_s"), r["std"].get("img_per_s"), COST[0][2])
        rest = [cell(r["mean"].get(k), r["std"].get(k), fmt) for k, _, fmt in COST[1:]]
        total = "—" if r["row_wall_s"] is None else f"{r['row_wall_s']:.0f}"
        lines.append("| " + " | ".join([r["name"], first, ratio, *rest, total]) + " |")
    lines += ["", "## Notes", "",
              "- Mean ± sample standard deviation (n − 1) over the seeds done; one seed shows the value alone.",
              "- k-NN: weighted k-NN top-1 at the headline k (cls token / mean of the patch tokens); linear probe: "
              "top-1 on frozen cls features; seg probe: linear probe on frozen patch tokens of the synthetic scenes.",
              "- Attention on objects: the last block's cls attention mass on object pixels divided by the object "
              "area fraction, mean over images (1 = uniform, higher = on the objects).",
              "- Patch cosine: mean cosine between the final-norm patch tokens of one image, averaged over images "
              "(near 1 = every patch carries the same vector).",
              "- Sampling acc: fraction of the keys kept by homologous attention that come from the query's own "
              "image (chance ≈ r = 1/G); final recon / HomoCon are the last logged window.",
              f"- {SPEED_NOTE}",
              "- Wall times are the study's own; a stage resumed after a kill counts its last attempt only.",
              "", reference_markdown(), ""]
    return "\n".join(lines)


def curves_png(plan: Plan, jobs: Sequence[Job]) -> bytes:
    """One panel per curve in :data:`CURVES`; one line per trained row: the mean over its seeds at the
    steps every seed logged."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from ..viz.figures import png_bytes

    fig = Figure(figsize=(13, 8.5), dpi=100)
    axes = list(fig.subplots(2, 2).flat)
    colours = colormaps["tab20"]
    for index, row in enumerate(r for r in plan.rows if not r.random_init):
        runs = [_records(j.run_dir) for j in jobs if j.row is row]
        runs = [r for r in runs if r]
        for ax, key in zip(axes, CURVES):
            series = [{r["step"]: (r.get("epoch", r["step"]), r[key]) for r in recs
                       if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])} for recs in runs]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if steps:
                x = [series[0][s][0] for s in steps]
                y = [statistics.fmean(s_[s][1] for s_ in series) for s in steps]
                ax.plot(x, y, label=row.name, color=colours(index % 20), linewidth=1.2)
    for ax, key in zip(axes, CURVES):
        ax.set_title(f"{key} (mean over seeds)", fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return png_bytes(fig)


def write_tables(plan: Plan, jobs: Sequence[Job], out_dir: Path, machine: dict,
                 command: Optional[str] = None) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and ``curves.png`` into ``out_dir``; return the JSON content.
    ``machine`` and ``command`` describe the (last) invocation."""
    rows = collect(plan, jobs)
    ref = speed_reference(plan, jobs)
    results = {
        "plan": plan.name, "plan_file": plan.path, "output_dir": str(out_dir), "data": plan.data,
        "classification_data": plan.evaluations.classification_data or plan.data,
        "segmentation_data": plan.evaluations.segmentation_data, "budget": flatten(plan.budget), "seeds": plan.seeds,
        "metrics": {k: title for k, title, _ in QUALITY + COST}, "speed_reference": ref, "speed_note": SPEED_NOTE,
        "machine": machine, "command": command, "rows": rows, "reference": reference(),
    }
    atomic_write_json(results, out_dir / "results.json")
    atomic_write_text(markdown(plan, rows, ref, out_dir, machine, command), out_dir / "results.md")
    png = curves_png(plan, jobs)
    atomic_write(out_dir / "curves.png", lambda tmp: tmp.write_bytes(png))
    return results
