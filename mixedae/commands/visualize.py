"""``mixedae visualize recon|attention`` and ``mixedae report``: arguments → :mod:`mixedae.viz`.

Each writes its figure or page and a JSON of the numbers beside it (same name, ``.json``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig, load_config
from ..errors import UserError
from .common import add_overrides


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
    p.add_argument("--data", required=True, help="synthetic | DIR | ARCHIVE.tar[.gz] | cifar10:ROOT (torchvision: cifar10, cifar100, mnist, fashionmnist, stl10, svhn); the val split is shown")
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


def _image_size(cfg: VisualizeConfig, model_size: int) -> int:
    size = cfg.data.image_size
    if size is not None and size != model_size:
        raise UserError(f"data.image_size={size} but the model works on {model_size} px images; "
                        f"drop the override or set data.image_size={model_size}")
    return model_size


def run_visualize(args: argparse.Namespace) -> int:
    from ..data import IMAGENET_MEAN, IMAGENET_STD
    from ..io import atomic_write_json
    from ..viz.samples import held_out_images

    cfg = load_config(VisualizeConfig, None, args.overrides, {"data": {"spec": args.data}})
    out = Path(args.out)
    if args.kind == "recon":
        from ..viz.recon import draw_reconstruction, load_pretraining_model, reconstruct

        model, arch = load_pretraining_model(args.weights)
        g = model.group_size
        if args.num_images % g:
            raise UserError(f"--num-images {args.num_images} is not a multiple of the group size G={g} of "
                            f"{arch['name']}; use a multiple of {g}")
        imgs, _ = held_out_images(cfg.data.spec, args.num_images, _image_size(cfg, model.encoder.img_size),
                                  cfg.data.num_samples, cfg.data.seed)
        if len(imgs) % g:
            raise UserError(f"the val split holds only {len(imgs)} images, not a multiple of G={g}; lower --num-images")
        rec = reconstruct(model, imgs, seed=cfg.seed)
        draw_reconstruction(rec, out, IMAGENET_MEAN, IMAGENET_STD)
        numbers = {"kind": "recon", "model": arch["name"], "weights": str(args.weights), "num_images": len(imgs),
                   "figure": str(out), "metrics": rec["metrics"]}
        print("  ".join(f"{k}={v:.4f}" for k, v in rec["metrics"].items()) + f"  ({arch['name']}, {len(imgs)} images)")
    else:
        from ..export.weights import load_encoder
        from ..viz.attention import attention_figure

        encoder, _ = load_encoder(args.weights)
        imgs, masks = held_out_images(cfg.data.spec, args.num_images, _image_size(cfg, encoder.img_size),
                                      cfg.data.num_samples, cfg.data.seed)
        numbers = {"kind": "attention", "weights": str(args.weights), "num_images": len(imgs),
                   **attention_figure(encoder, imgs, out, IMAGENET_MEAN, IMAGENET_STD, masks=masks)}
        if masks is not None:
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
