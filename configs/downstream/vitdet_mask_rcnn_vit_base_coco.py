# detectron2 LazyConfig: ViTDet Mask R-CNN on a MixedAE / MAE ViT-B/16 for COCO detection + instance segmentation.
#
# ViTDet's own recipe (projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py), the one MAE and MixedAE report for
# COCO: simple feature pyramid, window attention with 4 global blocks, relative position (zero init), drop path 0.1,
# 1024 x 1024 large-scale jitter, 64 images per iteration, AdamW lr 1e-4, weight decay 0.1, layer-wise lr decay 0.7,
# 100 epochs (184375 iterations, steps at 163889 and 177546, 250 warm-up iterations), mixed precision.
# Only the initial weights differ: a `mixedae export --format detectron2` file whose keys are already
# backbone.net.* (no ?matching_heuristics) and whose pos_embed is the sin-cos table at 1024 px.
#
#   mixedae export RUN_DIR --out exports/vit_base_detectron2 --format detectron2 --image-size 1024
#   python tools/lazyconfig_train_net.py --config-file configs/downstream/vitdet_mask_rcnn_vit_base_coco.py \
#       --num-gpus 8 train.output_dir=runs/vitdet_b
#
# Written for detectron2 at facebookresearch/detectron2@02b5c4e; checked here only for syntax and for agreement with
# mixedae's export (tests/eval/test_downstream_configs.py): detectron2 cannot be installed in mixedae's CI.
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

EXPORT = "exports/vit_base_detectron2"  # a `mixedae export --format detectron2 --image-size 1024` folder
EXPORT_IMAGE_SIZE = 1024  # export.json "image_size": the grid of the exported pos_embed
image_size = 1024

# Model: Mask R-CNN with ViTDet's ViT-B and simple feature pyramid (drop path 0.1, rel-pos, windows of 14)
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone.net.pretrain_img_size = EXPORT_IMAGE_SIZE  # no interpolation of the exported sin-cos table
model.backbone.net.pretrain_use_cls_token = True  # the exported pos_embed keeps its (zero) cls row

# Data: large-scale jitter (as projects/ViTDet/configs/common/coco_loader_lsj.py)
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 64
dataloader.train.mapper.recompute_boxes = True
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]

# Initialisation and trainer
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = EXPORT + "/backbone.pth"

# Schedule: 100 epochs = 184375 iterations x 64 images / 118k images
train.max_iter = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# Optimizer: AdamW (lr 1e-4, weight decay 0.1) with layer-wise lr decay 0.7 over the 12 blocks
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
