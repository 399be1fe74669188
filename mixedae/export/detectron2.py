"""Our encoder as a detectron2 checkpoint for ViTDet's ``ViT`` backbone (Mask R-CNN on COCO).

Target: ``detectron2.modeling.backbone.vit.ViT`` inside ``SimpleFeaturePyramid`` (attribute
``net``) inside ``GeneralizedRCNN`` (attribute ``backbone``), as built by
``projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py``. Its blocks use timm's names, so
the mapping is a prefix: every key becomes ``backbone.net.<key>``, except ``cls_token`` and the
final ``norm`` (ViTDet's ViT has neither). ``pos_embed`` keeps its cls row, which ViTDet expects
with ``pretrain_use_cls_token=True`` and drops itself; ``get_abs_pos`` interpolates the grid
bicubically when it differs from the input's, so set ``pretrain_img_size`` to the export size
(``export.json``) and export at the detection size (``--image-size 1024``) to get the exact sin-cos
table at 1024 px instead of an interpolation. ViTDet's relative position parameters
(``attn.rel_pos_h``/``rel_pos_w``, with ``use_rel_pos=True``) are not in any MAE-family checkpoint and
start at zero, as in the official recipe.

The file is ``{"model": state dict}``; detectron2's ``DetectionCheckpointer`` loads it by exact key
names (no ``?matching_heuristics=True`` needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from torch import Tensor

from ..data.transforms import Stats
from ..io import atomic_torch_save, atomic_write_json
from ..models import VisionTransformer
from .common import plain_state, provenance

CHECKPOINT = "backbone.pth"
CONFIG = "export.json"
PREFIX = "backbone.net."
DROPPED = ("cls_token", "norm.weight", "norm.bias")


def to_detectron2_state(encoder: VisionTransformer) -> dict[str, Tensor]:
    """The encoder's weights under ``GeneralizedRCNN``'s keys for a ViTDet backbone."""
    return {PREFIX + k: v for k, v in encoder.state_dict().items() if k not in DROPPED}


def backbone_args(encoder: VisionTransformer) -> dict[str, Any]:
    """``ViT(...)`` arguments that match the export (window / rel-pos settings stay the recipe's)."""
    return {"patch_size": encoder.patch_size, "in_chans": encoder.in_chans, "embed_dim": encoder.embed_dim,
            "depth": encoder.depth, "num_heads": encoder.num_heads, "mlp_ratio": encoder.mlp_ratio,
            "qkv_bias": encoder.qkv_bias, "pretrain_img_size": encoder.img_size, "pretrain_use_cls_token": True}


def write(encoder: VisionTransformer, out: Path, source: Optional[dict[str, Any]],
          stats: Stats = Stats()) -> tuple[list[Path], dict]:
    """Write ``backbone.pth`` (``{"model": ...}``) and ``export.json``; returns ``(files, config)``."""
    config = {"format": "detectron2", "checkpoint": CHECKPOINT, "image_size": encoder.img_size,
              "backbone": backbone_args(encoder), "pixel_mean": [255 * m for m in stats.mean],
              "pixel_std": [255 * s for s in stats.std], "input_format": "L" if stats.channels == 1 else "RGB", "mixedae": provenance(source)}
    atomic_torch_save({"model": plain_state(to_detectron2_state(encoder))}, out / CHECKPOINT)
    atomic_write_json(config, out / CONFIG)
    return [out / CHECKPOINT, out / CONFIG], config
