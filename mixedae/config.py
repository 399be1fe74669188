"""Typed configuration: nested dataclasses, YAML files and dotted ``key=value`` overrides.

Every key is declared with its type and default; an unknown key, a mistyped value or an invalid
choice is a :class:`~mixedae.errors.UserError` that names the key. ``to_dict`` gives the fully
resolved config that runs save beside their results.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import UserError


# --------------------------------------------------------------------------------------------
# generic machinery
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and mildly coerce: int → float) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise UserError(f"config key {key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise UserError(f"config key {key}: must be one of {choices}, got {value!r}")
        return value
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"config key {key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise UserError(f"config key {key}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"config key {key}: expected {tp.__name__}, got {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (partial) nested dict; unknown keys are errors."""
    if not isinstance(data, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"unknown config key {prefix}{unknown[0]}; valid keys in "
            f"{prefix.rstrip('.') or 'the config'}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def require_positive(cfg: Any, names: tuple[str, ...], prefix: str = "") -> None:
    """UserError unless each named number of ``cfg`` is None or > 0 (learning rates and the like)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise UserError(f"{prefix}{name} must be > 0, got {value}; pass a positive value")


def to_dict(cfg: Any) -> dict:
    """The fully resolved config as plain nested dicts (YAML/JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.epochs=3", "model.name=mae_vit_tiny_patch4_32"]`` → nested dict (values parsed as YAML)."""
    nested: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=10)")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with another override of {part}")
        node[leaf] = value
    return nested


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; see configs/pretrain/ for the presets")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (model:, data:, train:, ...)")
    return data


def load_config(cls: type, path: Optional[str | Path] = None, overrides: list[str] = (), extra: dict = None) -> Any:
    """Defaults ← YAML file ← ``extra`` (CLI flags) ← dotted overrides, validated into ``cls``."""
    data = read_yaml(path) if path else {}
    data = merge(data, extra or {})
    data = merge(data, parse_overrides(list(overrides)))
    return from_dict(cls, data)


# --------------------------------------------------------------------------------------------
# pre-training config
# --------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """Preset name plus optional overrides of its options (None: the preset's value)."""

    # A model preset: {mae,mix,mixedae}_vit_{tiny,small,base,large}_patch16 or _{tiny,small}_patch4_32
    name: str = "mixedae_vit_tiny_patch4_32"
    mix_ratio: float = 0.25  # r = 1/G; MAE keeps r·L patches visible (mask ratio 1 − r)
    norm_pix_loss: bool = True  # reconstruct per-patch normalised pixels (MAE's default)
    depth: Optional[int] = None  # encoder blocks; None: the preset's
    embed_dim: Optional[int] = None  # encoder width D; None: the preset's
    num_heads: Optional[int] = None  # encoder heads; None: the preset's
    patch_size: Optional[int] = None  # patch side p; None: the preset's
    in_chans: Optional[int] = None  # image channels (1 grey, 3 colour, N from .npy files); None: the preset's 3
    decoder_dim: Optional[int] = None  # decoder width; None: the preset's (512 for ViT-B/L, as MAE)
    decoder_depth: Optional[int] = None  # decoder blocks; None: the preset's (8 for ViT-B/L)
    decoder_heads: Optional[int] = None  # decoder heads; None: the preset's
    # Mixing: compose = one mixed image per group (MAE's cost); full = G mixed images per group (G× the cost)
    mode: Optional[typing.Literal["compose", "full"]] = None
    # MixedAE's segment embeddings: added in the decoder (default), to the encoder's mixed input, or none
    segment_embed: Optional[typing.Literal["decoder", "encoder", "none"]] = None
    homologous_blocks: Optional[Union[str, list[int]]] = None  # "all" | "none" | [indices]
    topk: Optional[int] = None  # K of the homologous top-k attention; None: r·L (the homologous patches of a query)
    homocon_weight: Optional[float] = None  # λ, the weight of the homologous contrastive loss (MixedAE: 1.0; 0 = off)
    recon_weight: Optional[float] = None  # w in L = w·L_recon + λ·L_HomoCon (mixing presets; 1.0); 0 = HomoCon alone
    tau: Optional[float] = None  # τ, the temperature of the homologous contrastive loss (0.25)
    # Width of an optional MLP projector before HomoCon; None: HomoCon on the encoder's patch features
    projector_dim: Optional[int] = None
    # Start from existing weights (not on resume): an official MAE checkpoint (with or without its decoder),
    # an export folder, a run folder or a checkpoint; see mixedae/engine/init_from.py. None: random init.
    init_from: Optional[str] = None
    # Activation checkpointing per encoder block: the same gradients, much less activation memory
    # (e.g. ViT-L at a large batch) for about a third more compute. Not part of the architecture.
    grad_checkpointing: bool = False

    def validate(self) -> None:
        from .models import preset_names

        if self.name not in preset_names():
            raise UserError(f"model.name {self.name!r} is not a preset; choose one of: {', '.join(preset_names())}")

    def create_kwargs(self, image_size: Optional[int]) -> dict:
        """Keyword overrides for :func:`mixedae.models.create_model` (preset values where None)."""
        kwargs = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "init_from") and v is not None}
        if not self.grad_checkpointing:  # off: left out, so the saved arch of existing runs is unchanged
            del kwargs["grad_checkpointing"]
        if image_size is not None:
            kwargs["img_size"] = image_size
        return kwargs


MAX_AUTO_WORKERS = 16


def available_workers() -> int:
    """DataLoader workers for one process: the cores it may run on (``os.sched_getaffinity``) shared by the
    processes of this node (torchrun's ``LOCAL_WORLD_SIZE``), minus one for the process itself; 1 to 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, per_process - 1))


@dataclass
class DataConfig:
    spec: str = "synthetic"  # "synthetic", a directory, or a .tar/.tar.gz archive
    image_size: Optional[int] = None  # None: the model preset's
    # Per-channel input normalisation (0-1 scale), one value per model.in_chans channel; None: ImageNet's for
    # 3 channels, their RGB average for 1; other channel counts must set them. Saved with the run, used by
    # every evaluation of its weights and written into every export's preprocessing config.
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None  # see data.mean
    num_samples: int = 5000  # synthetic scenes only
    seed: int = 0  # synthetic scenes / train-val split of unsplit folders
    num_workers: Optional[int] = None  # None: available_workers() (set when the config is built)
    # Pre-training input path (mixedae.engine.inputs). A training set whose decoded uint8 pixels take at
    # most in_memory_mb MiB (all images one size) is decoded once into memory, by every process (0: never).
    in_memory_mb: int = 2048
    # RandomResizedCrop + flip: "batched" = one tensor op per batch on the training device (images in
    # memory, or decoded by workers); "pil" = per image with PIL in DataLoader workers; "auto" = batched
    # when the data is in memory or the device is CUDA, else pil.
    augment: typing.Literal["auto", "batched", "pil"] = "auto"

    def __post_init__(self) -> None:
        if self.num_workers is None:
            self.num_workers = available_workers()

    def validate(self) -> None:
        if self.num_workers < 0:
            raise UserError("data.num_workers must be >= 0")
        if self.num_samples < 1:
            raise UserError("data.num_samples must be >= 1")
        if self.in_memory_mb < 0:
            raise UserError("data.in_memory_mb must be >= 0 (0 never holds the data in memory)")


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training set (the cosine schedule's length)
    max_steps: Optional[int] = None  # stop after this many optimiser steps (smoke runs)
    batch_size: int = 64  # per process
    # Micro-batches accumulated per optimiser step (effective batch = processes × batch_size × accum_steps)
    accum_steps: int = 1
    # auto: bf16 on a CUDA GPU or CPU with native bf16, else fp32 (mixedae.amp); the run's config.yaml
    # records the resolved value
    precision: typing.Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile (inductor) the training forward/backward; off: no speed-up measured on CPU
    # Clip the gradient norm to this (None: no clipping; the norm is logged either way)
    clip_grad: Optional[float] = None
    seed: int = 0  # seeds the weights, the data order, the augmentation and the masking / mixing noise
    device: str = "auto"  # auto | cpu | cuda
    # glibc: freed host memory stays in the process while training (no mmap per large tensor, no heap trim), so a
    # step does not page-fault its memory back in; resident memory stays at its peak (mixedae.host_memory)
    keep_freed_memory: bool = True

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "accum_steps"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class OptimConfig:
    blr: float = 1.5e-4  # lr = blr × effective batch / 256
    lr: Optional[float] = None  # absolute lr; overrides blr
    min_lr: float = 0.0  # the cosine schedule's floor
    weight_decay: float = 0.05  # AdamW weight decay (not on norms, biases, tokens and embeddings)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas (MAE's 0.9, 0.95)
    warmup_epochs: float = 1.0  # linear warm-up length, in epochs

    def validate(self) -> None:
        if len(self.betas) != 2:
            raise UserError(f"optim.betas must hold two numbers, got {self.betas}")
        require_positive(self, ("blr", "lr"), "optim.")


@dataclass
class LogConfig:
    every_steps: int = 20  # log (metrics.jsonl, TensorBoard, W&B) every N optimiser steps and at the end of each epoch
    recon_every_epochs: int = 1  # write recon/epoch-<n>.png every N epochs (and after the last)
    tensorboard: bool = True  # TensorBoard events in <run>/tb
    progress: bool = True  # progress bar / status lines (the same as --quiet when false)
    # Weights & Biases (pip install 'mixedae[wandb]'), rank 0, beside metrics.jsonl and TensorBoard; a resumed
    # run continues the same W&B run (its id is kept in <run>/wandb_id.txt); files go to <run>/wandb/.
    wandb: bool = False
    wandb_project: str = "mixedae"  # the W&B project
    wandb_run: Optional[str] = None  # the W&B run name; None: the run folder's name
    wandb_entity: Optional[str] = None  # None: your default entity
    wandb_mode: Optional[typing.Literal["online", "offline", "disabled"]] = None  # None: wandb's own (WANDB_MODE)


@dataclass
class CheckpointConfig:
    every_epochs: int = 1  # checkpoint-<epoch>.pt
    every_steps: Optional[int] = None  # also refresh last.pt every N steps (mid-epoch resume)


@dataclass
class PretrainConfig:
    """The whole pre-training configuration: what ``mixedae pretrain`` resolves from a YAML preset and
    ``key=value`` overrides and saves as ``<run>/config.yaml`` (see :func:`load_config`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output_dir: str = "runs/pretrain"  # the run folder
