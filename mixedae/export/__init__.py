"""Export an encoder for the libraries users fine-tune in: ``mixedae export W --out DIR --format F``; and read
any weights ``--weights`` / ``model.init_from`` may name back (:mod:`.weights`).

Formats (one module each, holding the whole conversion from our encoder, which has timm's key names):
    ``timm``        :mod:`.timm` — ``model.safetensors`` + ``pytorch_model.pth`` + ``config.json``;
                    ``timm.create_model("local-dir:DIR", pretrained=True)``. The default.
    ``hf``          :mod:`.hf` — a Hugging Face ``transformers`` ``ViTModel`` folder (``config.json`` +
                    ``model.safetensors`` + ``preprocessor_config.json``); ``ViTModel.from_pretrained(DIR)``.
    ``mmseg``       :mod:`.mmseg` — ``backbone.pth`` for mmsegmentation's ``MAE`` backbone (its UperNet
                    ADE20K recipe, ``configs/downstream/``) + ``export.json``.
    ``detectron2``  :mod:`.detectron2` — ``backbone.pth`` with ``backbone.net.*`` keys for ViTDet's ``ViT``
                    (Mask R-CNN, ``configs/downstream/``) + ``export.json``.

Every export is made for one input size (``image_size``, default the encoder's): the position
embedding is resampled to it first (sin-cos recomputed; see ``VisionTransformer.with_image_size``)
and every format's config records it. Files are written atomically, the config last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..data.transforms import Stats, resolve_stats
from ..errors import UserError
from ..models import VisionTransformer
from . import detectron2, hf, mmseg, timm

WRITERS = {"timm": timm.write, "hf": hf.write, "mmseg": mmseg.write, "detectron2": detectron2.write}
FORMATS = tuple(WRITERS)


def export_encoder(encoder: VisionTransformer, out_dir: str | Path, format: str = "timm",
                   image_size: Optional[int] = None, source: Optional[dict[str, Any]] = None,
                   stats: Optional[Stats] = None) -> dict[str, Any]:
    """Write ``encoder`` to ``out_dir`` in ``format``, made for ``image_size`` px inputs.

    Args:
        encoder: e.g. from :func:`mixedae.export.weights.load_encoder`.
        format: one of :data:`FORMATS`.
        image_size: the input size of the export (a multiple of the patch size; default the encoder's);
            the position embedding is resampled to it.
        source: ``load_encoder``'s info, recorded in the config.
        stats: the input normalisation written into the format's preprocessing config; default the one
            ``source`` names (the run's ``data.mean`` / ``data.std``), else the default for the channel count.
    Returns:
        ``{"format", "out_dir", "image_size", "model_args", "files", "config"}``.
    """
    if format not in WRITERS:
        raise UserError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    size = encoder.img_size if image_size is None else image_size
    if size < encoder.patch_size or size % encoder.patch_size:
        raise UserError(f"export image size {size} is not a multiple of the encoder's patch size {encoder.patch_size}; "
                        f"pass e.g. --image-size {max(1, round(size / encoder.patch_size)) * encoder.patch_size}")
    encoder = encoder.with_image_size(size).eval()
    out = Path(out_dir)
    if stats is None:
        stats = resolve_stats(encoder.in_chans, (source or {}).get("mean"), (source or {}).get("std"))
    files, config = WRITERS[format](encoder, out, source, stats)
    return {"format": format, "out_dir": str(out), "image_size": size, "model_args": encoder.timm_kwargs(),
            "files": [str(f) for f in files], "config": config}


def export_summary(result: dict[str, Any]) -> str:
    """One line naming the format, the architecture and the files."""
    args = result["model_args"]
    return (f"exported the encoder for {result['format']} (img {args['img_size']}, patch {args['patch_size']}, "
            f"dim {args['embed_dim']}, depth {args['depth']}, heads {args['num_heads']}) to {result['out_dir']}: "
            + ", ".join(Path(f).name for f in result["files"]))


__all__ = ["FORMATS", "export_encoder", "export_summary"]
