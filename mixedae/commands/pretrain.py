"""``mixedae pretrain``: config + overrides → :func:`mixedae.engine.pretrain.pretrain`."""

from __future__ import annotations

import argparse

from ..config import PretrainConfig, load_config
from ..errors import UserError
from .common import DATA_HELP, add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train MAE / naive mixing / MixedAE (also under torchrun)",
        description="Pre-train a ViT with MixedAE, the naive-mixing baseline or MAE. "
        "The same command runs under torchrun --nproc_per_node=N -m mixedae pretrain ...",
    )
    p.add_argument("--config", help="YAML preset, e.g. configs/pretrain/cifar10_mixedae_vit_tiny.yaml")
    p.add_argument("--data", help=DATA_HELP + " (overrides data.spec)")
    p.add_argument("--output-dir", help="run folder (overrides output_dir)")
    p.add_argument("--resume", help="auto (continue <output-dir>/last.pt if present) | PATH; refused if the "
                   "effective batch, processes × train.batch_size or train.accum_steps differ from the checkpoint's")
    p.add_argument("--resume-anyway", action="store_true",
                   help="with --resume: continue even across such a batch change (at the saved step count; steps "
                   "per epoch, data order and lr then differ from the original run)")
    add_overrides(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.pretrain import pretrain
    from ..viz.recon import recon_hook

    extra: dict = {}
    if args.data:
        extra["data"] = {"spec": args.data}
    if args.output_dir:
        extra["output_dir"] = args.output_dir
    cfg = load_config(PretrainConfig, args.config, args.overrides, extra)
    if args.resume_anyway and not args.resume:
        raise UserError("--resume-anyway only applies with --resume auto|PATH; add one or drop --resume-anyway")
    results = pretrain(cfg, resume=args.resume, epoch_hooks=[recon_hook(cfg)], resume_anyway=args.resume_anyway)
    final = results.get("final") or {}
    parts = "  ".join(f"{k}={v:.4f}" for k, v in final.items() if k in ("loss", "recon", "homocon", "sampling_acc"))
    print(f"{cfg.model.name}: {results['steps']} steps in {results['wall_time_s']:.0f}s "
          f"({results['img_per_s'] or 0:.0f} img/s)  {parts}")
    print(f"run folder: {cfg.output_dir}  (results.json, last.pt, metrics.jsonl, recon/)")
    return 0
