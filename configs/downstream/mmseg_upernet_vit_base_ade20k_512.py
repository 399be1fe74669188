# mmsegmentation 1.x: UperNet on a MixedAE / MAE ViT-B/16 for ADE20K semantic segmentation (150 classes).
#
# The recipe MAE and MixedAE report (BEiT's, as in mmsegmentation's configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py):
# 512 x 512 crops, 160k iterations of 16 images (8 GPUs x 2), AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05,
# layer-wise lr decay 0.65, 1500 linear warm-up iterations then linear (poly, power 1) decay, drop path 0.1,
# relative position bias (zero init), mixed precision; single-scale sliding-window evaluation (stride 341).
#
#   mixedae export RUN_DIR --out exports/vit_base_mmseg --format mmseg --image-size 512
#   python tools/train.py configs/downstream/mmseg_upernet_vit_base_ade20k_512.py          # 1 GPU, or
#   bash tools/dist_train.sh configs/downstream/mmseg_upernet_vit_base_ade20k_512.py 8     # 8 GPUs (the recipe)
#
# Self-contained (no _base_ files). Edit EXPORT and DATA_ROOT below. Written for mmsegmentation 1.2 and checked here
# only for syntax and for agreement with mixedae's export (tests/eval/test_downstream_configs.py): it cannot run in
# mixedae's CI (mmcv does not build there).

EXPORT = 'exports/vit_base_mmseg'  # a `mixedae export --format mmseg --image-size 512` folder
DATA_ROOT = 'data/ade/ADEChallengeData2016'  # images/{training,validation}, annotations/{training,validation}
crop_size = (512, 512)
num_layers = 12

# ---------------------------------------------------------------------------------------------------- model
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # ImageNet statistics, as mixedae pre-trains (export.json: mean, std)
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=EXPORT + '/backbone.pth',  # {"state_dict": MAE-backbone keys}; pos_embed already at 32 x 32
    backbone=dict(
        type='MAE',  # export.json "backbone" holds these architecture arguments
        img_size=crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=768,
        num_layers=num_layers,
        num_heads=12,
        mlp_ratio=4,
        out_indices=[3, 5, 7, 11],
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        norm_eval=False,
        init_values=1.0),  # layer scale; the export sets gamma_1 = gamma_2 = 1, i.e. the pre-trained network
    neck=dict(type='Feature2Pyramid', embed_dim=768, rescales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# ----------------------------------------------------------------------------------------------------- data
dataset_type = 'ADE20KDataset'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),  # label 0 = "other" is ignored, 1..150 -> 0..149
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,  # per GPU; 8 GPUs give the recipe's 16
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=DATA_ROOT,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=DATA_ROOT,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# ------------------------------------------------------------------------------------------------- schedule
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(num_layers=num_layers, layer_decay_rate=0.65),
    constructor='LayerDecayOptimizerConstructor',
    loss_scale='dynamic')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# -------------------------------------------------------------------------------------------------- runtime
default_scope = 'mmseg'
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
