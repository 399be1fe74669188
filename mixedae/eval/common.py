"""What every evaluation protocol shares: its config base, seeding, data, output folders and results.

Output folders: a protocol writes ``results.json`` into ``output_dir``; by default that is
``<run folder>/eval/<protocol>`` for weights from a pre-training run and
``runs/eval/<weights name>/<protocol>`` otherwise. Frozen features are cached in ``features/``
beside the default protocol folders (so k-NN, the linear probe and transfer share them) or inside an
explicit ``output_dir``; ``cache_dir=...`` overrides both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch

from ..config import DataConfig, load_config, to_dict
from ..data import build_dataset, describe_dataset
from ..errors import UserError
from ..io import atomic_write_json
from ..models import VisionTransformer

RESULTS_FILE = "results.json"
FEATURES_DIR = "features"


@dataclass
class EvalConfig:
    """Keys every protocol accepts as ``key=value`` overrides (``data.*`` as in pre-training)."""

    data: DataConfig = field(default_factory=DataConfig)
    extract_batch_size: int = 128  # images per forward pass of the frozen encoder
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True
    cache_dir: Optional[str] = None  # feature cache folder (default: see mixedae.eval.common)
    cache_features: bool = True  # also keep extracted features on disk
    # autocast of the encoder's forward passes (feature extraction, fine-tuning); auto: bf16 on a CUDA GPU or
    # CPU with native bf16, else fp32 (mixedae.amp); fp16 needs CUDA
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def validate(self) -> None:
        if self.extract_batch_size < 1:
            raise UserError(f"extract_batch_size must be >= 1, got {self.extract_batch_size}")


def load_eval_config(cls: type, data: str, overrides: Sequence[str] = (), extra: Optional[dict] = None) -> Any:
    """A protocol config from its defaults, ``extra`` (function arguments) and ``key=value`` overrides."""
    return load_config(cls, None, list(overrides), {"data": {"spec": data}, **(extra or {})})


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def image_size_for(cfg: EvalConfig, encoder: VisionTransformer) -> int:
    """The encoder's input size; a different ``data.image_size`` is a UserError."""
    size = cfg.data.image_size
    if size is not None and size != encoder.img_size:
        raise UserError(f"data.image_size={size} but the encoder works on {encoder.img_size} px images; "
                        f"drop the override or set data.image_size={encoder.img_size}")
    return encoder.img_size


def weights_name(info: dict[str, Any]) -> str:
    """Short name of loaded weights: the run or export folder's name, else the file's stem."""
    path = Path(info["path"])
    return path.parent.name if info.get("run_dir") or info["kind"] == "export" else path.stem


def eval_root(info: dict[str, Any]) -> Path:
    """``<run>/eval`` for weights of a pre-training run, else ``runs/eval/<weights name>``."""
    if info.get("run_dir"):
        return Path(info["run_dir"]) / "eval"
    return Path("runs") / "eval" / weights_name(info)


def output_dirs(info: dict[str, Any], protocol: str, output_dir: Optional[str | Path],
                cache_dir: Optional[str]) -> tuple[Path, Path]:
    """``(results folder, feature cache folder)`` following the rules in the module docstring."""
    if output_dir is None:
        root = eval_root(info)
        out, cache = root / protocol, root / FEATURES_DIR
    else:
        out = Path(output_dir)
        cache = out / FEATURES_DIR
    return out, Path(cache_dir) if cache_dir else cache


def labelled_splits(cfg: EvalConfig, image_size: int, train_transform: Callable, val_transform: Callable):
    """``(train, val)`` datasets of ``cfg.data`` with image-level labels (UserError without labels)."""
    opts = dict(image_size=image_size, num_samples=cfg.data.num_samples, seed=cfg.data.seed, require_labels=True)
    train = build_dataset(cfg.data.spec, "train", train_transform, **opts)
    val = build_dataset(cfg.data.spec, "val", val_transform, **opts)
    if not train.classes:
        raise UserError(f"{cfg.data.spec} has no image-level classes; supervised protocols need <root>/<class>/*.jpg")
    return train, val


def data_summary(cfg: EvalConfig, train, val) -> dict[str, Any]:
    """The data part of a results JSON."""
    return {"spec": cfg.data.spec, "train": len(train), "val": len(val), "num_classes": len(train.classes),
            "train_describe": describe_dataset(train), "val_describe": describe_dataset(val)}


def write_results(results: dict[str, Any], out: Path, cfg: EvalConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Add the resolved config and weights description, write ``<out>/results.json`` atomically."""
    results = {**results, "weights": {k: v for k, v in info.items() if k != "fingerprint"}, "config": to_dict(cfg),
               "results_file": str(out / RESULTS_FILE)}
    atomic_write_json(results, out / RESULTS_FILE)
    return results


def dataset_name(spec: str) -> str:
    """Short column name of a data spec: ``synthetic``, a folder's name, an archive's name without suffixes."""
    name = Path(spec.rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
