"""``mixedae pretrain``: config + overrides → :func:`mixedae.engine.pretrain.pretrain`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import PretrainConfig, load_config
from ..errors import UserError
from .common import add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train MAE / naive mixing / MixedAE (also under torchrun)",
        description="Pre-train a ViT with MixedAE, the naive-mixing baseline or MAE. "
        "The same command runs under torchrun --nproc_per_node=N -m mixedae pretrain ...",
    )
    p.add_argument("--config", help="YAML preset, e.g. configs/pretrain/cifar10_mixedae_vit_tiny.yaml")
    p.add_argument("--data", help="synthetic | DIR | ARCHIVE.tar[.gz] | cifar10:ROOT (torchvision: cifar10, cifar100, mnist, fashionmnist, stl10, svhn) (overrides data.spec)")
    p.add_argument("--output-dir", help="run folder (overrides output_dir)")
    p.add_argument("--resume", help="auto (continue <output-dir>/last.pt if present) | PATH; refused if the "
                   "effective batch, processes × train.batch_size or train.accum_steps differ from the checkpoint's")
    p.add_argument("--resume-anyway", action="store_true",
                   help="with --resume: continue even across such a batch change (at the saved step count; steps "
                   "per epoch, data order and lr then differ from the original run)")
    add_overrides(p)
    p.set_defaults(func=run)


def recon_hook(cfg: PretrainConfig):
    """Epoch hook writing ``recon/epoch-<n>.png`` from a fixed batch of held-out images."""
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ..viz.recon import reconstruction_figure
    from ..viz.samples import held_out_images

    state: dict = {}

    def hook(model, epoch: int, run_dir: Path) -> None:
        if "imgs" not in state:
            g = model.group_size
            opts = dict(image_size=model.encoder.img_size, num_samples=cfg.data.num_samples, seed=cfg.data.seed)
            count = 2 * g if g > 1 else 8
            imgs = held_out_images(cfg.data.spec, count, **opts)[0]
            if len(imgs) < g:  # a tiny hold-out split: show training images instead
                imgs = held_out_images(cfg.data.spec, count, split="train", **opts)[0]
            state["imgs"] = imgs[: len(imgs) - len(imgs) % g]
        device = next(model.parameters()).device
        reconstruction_figure(model, state["imgs"].to(device), run_dir / "recon" / f"epoch-{epoch}.png",
                              IMAGENET_MEAN, IMAGENET_STD)

    return hook


def run(args: argparse.Namespace) -> int:
    from ..engine.pretrain import pretrain

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
