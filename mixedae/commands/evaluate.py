"""``mixedae knn | linprobe | finetune | segprobe | segfinetune | transfer | export``: arguments → :mod:`mixedae.eval`.

Each command calls one library function, prints its short summary and leaves ``results.json``
(or the export files) behind; ``key=value`` overrides go to the protocol's typed config.
"""

from __future__ import annotations

import argparse

from .common import DATA_HELP, add_overrides

WEIGHTS_HELP = "pre-training run folder, checkpoint (.pt/.pth/.safetensors), export folder or MAE-style checkpoint"
EXPORT_FORMATS = ("timm", "hf", "mmseg", "detectron2")  # mixedae.export.FORMATS (not imported: keeps --help fast)
PROTOCOLS = {  # name: (short help, description, override example)
    "linprobe": ("linear probe on frozen cls features (BatchNorm + Linear, LARS)",
                 "MAE's linear probe on frozen cls-token features. Keys: epochs, batch_size, blr|lr, warmup_epochs, "
                 "weight_decay, seed, data.*, ...",
                 "epochs=30 batch_size=256 blr=6.4 data.num_workers=8"),
    "finetune": ("fine-tune end to end (MAE recipe; also under torchrun)",
                 "MAE fine-tuning of a timm ViT initialised from the encoder (layer decay, drop-path, mixup/cutmix, "
                 "RandAugment, random erasing). Keys: epochs, batch_size, blr|lr, layer_decay, drop_path, mixup, "
                 "cutmix, copy_norm, precision, data.*, ... Also runs under torchrun --nproc_per_node=N -m mixedae "
                 "finetune ...",
                 "epochs=100 batch_size=32 blr=5e-4 layer_decay=0.65 precision=bf16"),
    "segprobe": ("linear segmentation probe on frozen patch tokens (mIoU)",
                 "Per-patch linear classifier on frozen patch tokens, trained on crops of short-side-resized images; "
                 "sliding-window mIoU at the original resolution. Keys: layers, epochs, batch_size, lr, ignore_index, "
                 "reduce_zero_label, num_classes, short_side, stride, train_crop, max_memory_gb, data.*, ...",
                 "epochs=30 layers=4 data.image_size=512 reduce_zero_label=true"),
    "segfinetune": ("fine-tune for segmentation (layer decay, linear or FPN head; mIoU)",
                    "The encoder unfrozen under a linear or small UperNet-like FPN head (head=linear|fpn), AdamW with "
                    "layer decay 0.65, random crops of rescaled images, sliding-window mIoU at the original "
                    "resolution; saves segfinetuned.pth. Data: synthetic or images/{train,val}/ + "
                    "annotations/{train,val}/ (ADE20K's training/validation too; reduce_zero_label=true for ADE20K). "
                    "Keys: head, epochs, batch_size, lr, layer_decay, drop_path, ignore_index, reduce_zero_label, "
                    "num_classes, short_side, stride, scale_range, data.*, ...",
                    "head=fpn epochs=20 data.image_size=512 reduce_zero_label=true"),
}
KNN_EXAMPLE = "block_mib=2048 extract_batch_size=256 data.num_workers=8"
TRANSFER_EXAMPLE = "linprobe.epochs=30 knn.temperature=0.1 data.num_workers=8"


def int_list(text: str) -> list[int]:
    """``"20"`` or ``"10,20,100"`` → list of ints (argparse type)."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma list like 10,20,100, got {text!r}") from None


RANDOM_INIT_HELP = ("evaluate an untrained encoder of the same shape as --weights instead (initialised with seed=, "
                    "default 0); results go to <run>/eval/<protocol>-random, never over the trained ones")
RANDOM_INIT_PROTOCOLS = ("knn", "linprobe", "segprobe")


def _common(p: argparse.ArgumentParser, example: str, random_init: bool = False) -> None:
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--output-dir", help="results folder (default <run>/eval/<protocol> or runs/eval/<name>/<protocol>)")
    if random_init:
        p.add_argument("--random-init", action="store_true", help=RANDOM_INIT_HELP)
    add_overrides(p, example)


def _weights_args(args: argparse.Namespace, protocol: str) -> tuple:
    """``(weights, output_dir, overrides)``: as given, or those of the untrained encoder with --random-init."""
    if not getattr(args, "random_init", False):
        return args.weights, args.output_dir, args.overrides
    from ..eval.random_init import random_init_run

    return random_init_run(args.weights, protocol, args.overrides, args.output_dir)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn", help="weighted k-NN on frozen features (top-1)",
                       description="DINO's weighted k-NN (cosine, exp(sim/T) votes) on frozen cls and mean-patch "
                                   "features; the headline is cls top-1 at k=20. Keys: block_mib, extract_batch_size, "
                                   "device, cache_features, data.*, ...")
    _common(p, KNN_EXAMPLE, random_init=True)
    p.add_argument("--k", type=int_list, default=[10, 20, 100, 200], help="k or comma list (default 10,20,100,200)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote temperature T (default 0.07)")
    p.set_defaults(func=run_knn_command)

    for name, (short, description, example) in PROTOCOLS.items():
        p = sub.add_parser(name, help=short, description=description)
        _common(p, example, random_init=name in RANDOM_INIT_PROTOCOLS)
        p.set_defaults(func=run_protocol_command, protocol=name)

    p = sub.add_parser("transfer", help="k-NN / linear probe over several datasets: one table",
                       description="Rows = weights × protocol, columns = datasets + average (top-1 %%). "
                                   "knn.<key>=... / linprobe.<key>=... overrides go to one protocol only.")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP + " (comma list: one row each)")
    p.add_argument("--data", required=True, help="comma list of " + DATA_HELP)
    p.add_argument("--protocols", default="knn,linprobe", help="comma list of knn, linprobe (default both)")
    p.add_argument("--output-dir", help="results folder (default <run>/eval/transfer)")
    add_overrides(p, TRANSFER_EXAMPLE)
    p.set_defaults(func=run_transfer_command)

    p = sub.add_parser("export", help="export the encoder for timm, transformers, mmsegmentation or detectron2",
                       description="timm (default): model.safetensors, pytorch_model.pth, config.json; loads with "
                                   "timm.create_model('local-dir:DIR', pretrained=True). hf: a transformers ViTModel "
                                   "folder (ViTModel.from_pretrained(DIR)). mmseg: backbone.pth for mmsegmentation's "
                                   "MAE backbone. detectron2: backbone.pth (backbone.net.*) for ViTDet. "
                                   "See configs/downstream/README.md.")
    p.add_argument("weights", metavar="W", help=WEIGHTS_HELP)
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument("--format", default="timm", choices=EXPORT_FORMATS, help="target library (default timm)")
    p.add_argument("--image-size", type=int, help="input size the export is made for (a multiple of the patch size; "
                                                  "default the encoder's): the position embedding is resampled")
    p.set_defaults(func=run_export_command)


def run_knn_command(args: argparse.Namespace) -> int:
    from ..eval.knn import run_knn, summary

    weights, output_dir, overrides = _weights_args(args, "knn")
    print(summary(run_knn(weights, args.data, ks=args.k, temperature=args.temperature, overrides=overrides,
                          output_dir=output_dir)))
    return 0


def run_protocol_command(args: argparse.Namespace) -> int:
    from ..eval import finetune, linprobe, segfinetune, segprobe

    module = {"linprobe": linprobe, "finetune": finetune, "segprobe": segprobe, "segfinetune": segfinetune}[args.protocol]
    run = getattr(module, f"run_{args.protocol}")
    weights, output_dir, overrides = _weights_args(args, args.protocol)
    text = module.summary(run(weights, args.data, overrides=overrides, output_dir=output_dir))
    if text:
        print(text)
    return 0


def run_transfer_command(args: argparse.Namespace) -> int:
    from ..eval.transfer import run_transfer, summary

    print(summary(run_transfer(args.weights, args.data, protocols=args.protocols, overrides=args.overrides,
                               output_dir=args.output_dir)))
    return 0


def run_export_command(args: argparse.Namespace) -> int:
    from ..export.weights import load_encoder
    from ..export import export_encoder, export_summary

    encoder, info = load_encoder(args.weights)
    print(export_summary(export_encoder(encoder, args.out, args.format, args.image_size, source=info)))
    return 0
