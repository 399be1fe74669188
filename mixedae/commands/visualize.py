"""``mixedae visualize recon|attention`` and ``mixedae report``: arguments → :mod:`mixedae.viz`.

Each writes its figure or page and a JSON of the numbers beside it (same name, ``.json``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig, load_config
from .common import DATA_HELP, add_overrides


@dataclass
class VisualizeConfig:
    """Overrides accepted by ``mixedae visualize`` (``data.image_size=``, ``data.num_samples=``, ...)."""

    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0  # masking / mixing noise of the reconstructions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "visualize",
        help="reconstruction or attention figure of a model",
        description="recon: sources, masked or mixed inputs and reconstructions (needs a pre-training checkpoint "
        "with the decoder); attention: last-block cls attention maps, with the attention mass on objects for "
        "the synthetic scenes. Writes FILE.png and FILE.json.",
    )
    p.add_argument("kind", choices=("recon", "attention"))
    p.add_argument("--weights", required=True, help="run folder or checkpoint (attention: also an export folder "
                                                    "or an MAE-style checkpoint)")
    p.add_argument("--data", required=True, help=DATA_HELP + "; the val split is shown")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--num-images", type=int, default=8, help="images to show (mixing: a multiple of the group size)")
    add_overrides(p, "data.num_samples=200 seed=1")
    p.set_defaults(func=run_visualize)

    r = sub.add_parser(
        "report",
        help="HTML page comparing pre-training runs",
        description="One self-contained HTML page (curves, final numbers, evaluations, latest reconstructions) "
        "plus a JSON of the numbers beside it.",
    )
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", default="report.html", help="output HTML (default report.html)")
    r.set_defaults(func=run_report)


def run_visualize(args: argparse.Namespace) -> int:
    from ..io import atomic_write_json
    from ..viz.plots import plot_attention, plot_reconstruction

    cfg = load_config(VisualizeConfig, None, args.overrides, {"data": {"spec": args.data}})
    out = Path(args.out)
    common = dict(num_images=args.num_images, path=out, num_samples=cfg.data.num_samples, data_seed=cfg.data.seed,
                  image_size=cfg.data.image_size)
    if args.kind == "recon":
        numbers = plot_reconstruction(args.weights, cfg.data.spec, seed=cfg.seed, **common)
        print("  ".join(f"{k}={v:.4f}" for k, v in numbers["metrics"].items())
              + f"  ({numbers['model']}, {numbers['num_images']} images)")
    else:
        numbers = plot_attention(args.weights, cfg.data.spec, **common)
        if "per_image" in numbers:
            print("attention mass on objects: " + " ".join(f"{v:.3f}" for v in numbers["per_image"])
                  + f"  mean {numbers['mean']:.4f}")
    atomic_write_json(numbers, out.with_suffix(".json"))
    print(f"figure: {out}  numbers: {out.with_suffix('.json')}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    import json

    from ..viz.report import build_report

    out = build_report(args.run_dirs, args.out)
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    for run in runs:  # the headline k-NN top-1 of `mixedae knn` on this run (and with --random-init), if evaluated
        run["summary"]["knn_top1"] = run["eval"].get("knn/results.top1")
        run["summary"]["knn_random"] = run["eval"].get("knn-random/results.top1")
    keys = ("steps", "loss", "recon", "homocon", "sampling_acc", "knn_top1", "knn_random")
    print("run".ljust(20) + "model".ljust(30) + "".join(k.rjust(13) for k in keys))
    for run in runs:
        row = run["summary"]
        cells = ("—" if row.get(k) is None else f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k])
                 for k in keys)
        print(run["name"][:19].ljust(20) + str(row.get("model") or "—")[:29].ljust(30) + "".join(c.rjust(13) for c in cells))
    print(f"report: {out}  numbers: {out.with_suffix('.json')}")
    return 0
