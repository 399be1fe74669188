"""configs/downstream/: they cannot run here (no mmcv, no detectron2), so check that they parse, that the
mmseg config (plain python) agrees with what `mixedae export --format mmseg` writes, and that the README's
export commands are valid mixedae command lines."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import torch

from mixedae.cli import parse_args
from mixedae.export import detectron2, mmseg
from mixedae.models import VisionTransformer
from mixedae.models.registry import ENCODER_KEYS, preset_kwargs

DOWNSTREAM = Path(__file__).resolve().parents[2] / "configs" / "downstream"


def test_mmseg_config_matches_the_export_of_a_vit_base_at_512():
    namespace: dict = {}
    exec((DOWNSTREAM / "mmseg_upernet_vit_base_ade20k_512.py").read_text(), namespace)  # plain dicts, no imports
    model, optim = namespace["model"], namespace["optim_wrapper"]
    with torch.device("meta"):  # the architecture only: no memory, no init cost
        encoder = VisionTransformer(img_size=512, **{k: v for k, v in preset_kwargs("mixedae_vit_base_patch16").items()
                                                     if k in ENCODER_KEYS and k != "img_size"})
    expected = mmseg.backbone_args(encoder)
    backbone = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model["backbone"].items()}
    assert {k: backbone[k] for k in expected} == expected
    assert model["pretrained"] == f"{namespace['EXPORT']}/{mmseg.CHECKPOINT}"
    assert optim["optimizer"]["lr"] == 1e-4 and optim["paramwise_cfg"] == {"num_layers": 12, "layer_decay_rate": 0.65}
    assert namespace["train_cfg"]["max_iters"] == 160000 and model["test_cfg"]["mode"] == "slide"
    assert all(step.get("reduce_zero_label") for step in namespace["train_pipeline"] if step["type"] == "LoadAnnotations")


def test_detectron2_config_parses_and_points_at_the_export():
    text = (DOWNSTREAM / "vitdet_mask_rcnn_vit_base_coco.py").read_text()
    ast.parse(text)
    assert f'train.init_checkpoint = EXPORT + "/{detectron2.CHECKPOINT}"' in text
    assert "lr_decay_rate=0.7" in text and "train.max_iter = 184375" in text and "EXPORT_IMAGE_SIZE = 1024" in text
    assert "model.backbone.net.pretrain_img_size = EXPORT_IMAGE_SIZE" in text  # the export's keys: backbone.net.*
    assert detectron2.PREFIX == "backbone.net."


def test_readme_export_commands_are_valid():
    commands = re.findall(r"^mixedae export .*$", (DOWNSTREAM / "README.md").read_text(), flags=re.M)
    formats = set()
    for line in commands:
        args = parse_args(shlex.split(line)[1:])
        formats.add(args.format)
        assert args.image_size == {"mmseg": 512, "detectron2": 1024}[args.format]
    assert formats == {"mmseg", "detectron2"}
