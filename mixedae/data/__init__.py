"""Data: built-in synthetic scenes, image folders and archives, transforms, and ``build_dataset``."""

from .archives import cache_dir, extract_archive, is_archive
from .build import build_dataset, build_segmentation_dataset, describe_dataset, holdout_split, kind_of, resolve_root
from .folders import (IGNORE_INDEX, ImageFiles, SegmentationFolder, UnreadableImage, detect_layout, list_images,
                      load_image)
from .synthetic import SHAPES, SyntheticScenes
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Stats, denormalize, eval_transform, pretrain_transform, resolve_stats

__all__ = [
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "SHAPES", "ImageFiles", "SegmentationFolder", "SyntheticScenes",
    "UnreadableImage", "build_dataset", "build_segmentation_dataset", "cache_dir", "denormalize", "describe_dataset",
    "detect_layout", "eval_transform", "extract_archive", "holdout_split", "is_archive", "kind_of", "list_images",
    "Stats", "load_image", "pretrain_transform", "resolve_root", "resolve_stats",
]
