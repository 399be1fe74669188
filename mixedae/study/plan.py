"""A study plan: typed schema, loading, and the pre-training config of every (row, seed).

A plan is a YAML file (see ``configs/study/``)::

    name: quick                      # names the default output folder runs/study/<name>
    data: cifar10:~/.cache/mixedae/torchvision  # pre-training + classification data; --data overrides it
    pretrain_data: data              # or classification_subset: pre-train on evaluations.train_subset's images
    budget:                          # pre-training keys applied to every row (nested or dotted)
      train: {epochs: 4, batch_size: 128, precision: bf16}
    seeds: [0]                       # train.seed of every row without its own seeds
    speed_reference: MAE             # row whose img/s is the denominator of the step-time ratio
    rows:
      - name: MixedAE λ=0.1
        config: ../pretrain/cifar10_mixedae_vit_tiny.yaml   # relative to the plan file
        preset: null                 # model.name, instead of or on top of the config file
        overrides: {model.homocon_weight: 0.1}
        seeds: [0, 1]                # optional
        random_init: false           # true: evaluate the untrained encoder of this shape, no training
    evaluations:
      classification_data: null      # k-NN, linear probe, patch cosine (None: the plan's data)
      train_subset: 10000            # keep this many classification train images (class-stratified)
      val_subset: null
      segmentation_data: synthetic   # segmentation probe and attention on objects
      common: {progress: true}       # keys every protocol gets
      knn: {overrides: {ks: [20]}}   # each protocol: enabled (default true) and overrides
      linprobe: {}
      segprobe: {overrides: {epochs: 20}}
      attention: {overrides: {num_images: 256}}
      patch_cosine: {overrides: {num_images: 256}}

Layers of a row's pre-training config, later winning: its ``config`` file, the plan's ``budget``,
``data.spec`` = the plan's ``data``, ``model.name`` = its ``preset``, its ``overrides``, then
``train.seed`` and ``output_dir`` set by the study. Every row and seed is resolved and its model
built once when the plan loads, so a mistake in the last row stops the study before any training.
``key=value`` arguments of ``mixedae study`` override the plan itself (``budget.train.epochs=2``,
``seeds=[0,1]``, ``evaluations.train_subset=5000``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import PretrainConfig, from_dict, merge, parse_overrides, read_yaml, to_dict
from ..data.torchvision_sets import parse_spec
from ..errors import UserError
from ..eval.attention_objects import AttentionObjectsConfig
from ..eval.common import load_eval_config
from ..eval.knn import KnnConfig
from ..eval.linprobe import LinprobeConfig
from ..eval.patch_cosine import PatchCosineConfig
from ..eval.segprobe import SegprobeConfig
from ..models import create_model

PROTOCOLS = {  # name → its typed config (checked when the plan loads)
    "knn": KnnConfig, "linprobe": LinprobeConfig, "segprobe": SegprobeConfig, "attention": AttentionObjectsConfig,
    "patch_cosine": PatchCosineConfig,
}
CLASSIFICATION = ("knn", "linprobe", "patch_cosine")  # the others run on the segmentation data
# Keys that do not change what a run computes; left out of the config hash that marks a run done.
UNHASHED = ("output_dir", "log", "checkpoint", "data.num_workers", "train.device")
EVAL_UNHASHED = ("progress", "device", "cache_dir", "cache_features", "data.num_workers")  # same for evaluations


@dataclass
class RowSpec:
    """One line of the table: a pre-training setting (or an untrained encoder of that shape)."""

    name: str = ""  # the row's name in the table
    config: Optional[str] = None  # pre-training YAML, relative to the plan file
    preset: Optional[str] = None  # model.name
    overrides: dict = field(default_factory=dict)  # pre-training keys, nested or dotted
    seeds: Optional[list[int]] = None  # default: the plan's seeds
    random_init: bool = False  # evaluate the untrained encoder of this shape (seeded), no training


@dataclass
class ProtocolSpec:
    enabled: bool = True  # run this protocol
    overrides: dict = field(default_factory=dict)  # keys of the protocol's config, nested or dotted


@dataclass
class EvaluationsSpec:
    classification_data: Optional[str] = None  # k-NN, linear probe, patch cosine; None: the plan's data
    train_subset: Optional[int] = None  # classification train images kept (class-stratified); None: all
    val_subset: Optional[int] = None  # classification val images kept; None: all
    subset_seed: int = 0  # seed of the class-stratified subsets
    segmentation_data: str = "synthetic"  # segmentation probe and attention on objects (needs masks)
    common: dict = field(default_factory=dict)  # keys given to every protocol (e.g. progress: false)
    knn: ProtocolSpec = field(default_factory=ProtocolSpec)
    linprobe: ProtocolSpec = field(default_factory=ProtocolSpec)
    segprobe: ProtocolSpec = field(default_factory=ProtocolSpec)
    attention: ProtocolSpec = field(default_factory=ProtocolSpec)
    patch_cosine: ProtocolSpec = field(default_factory=ProtocolSpec)

    def validate(self) -> None:
        for key in ("train_subset", "val_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"evaluations.{key} must be >= 1 or null (all images), got {value}")

    def enabled(self) -> list[str]:
        return [p for p in PROTOCOLS if getattr(self, p).enabled]


@dataclass
class Plan:
    name: str = ""  # names the default output folder runs/study/<name>
    data: str = "synthetic"  # pre-training + classification data (--data overrides it)
    # what the rows pre-train on: "data" (the plan's data) or "classification_subset" (the train split of the
    # evaluations' class-stratified subset: a small budget that still sees every class, as the quick plan uses)
    pretrain_data: str = "data"
    budget: dict = field(default_factory=dict)  # pre-training keys for every row
    seeds: list[int] = field(default_factory=lambda: [0])  # train.seed of every row without its own seeds
    speed_reference: Optional[str] = None  # default: the first row with an MAE preset
    evaluations: EvaluationsSpec = field(default_factory=EvaluationsSpec)
    rows: list = field(default_factory=list)  # RowSpec, filled by load_plan
    path: Optional[str] = None  # the plan file (set by load_plan; row config paths are relative to it)


PRETRAIN_DATA = ("data", "classification_subset")


@dataclass
class Job:
    """One (row, seed): its resolved pre-training config, folder and the hash that marks it done."""

    row: RowSpec
    seed: int
    cfg: PretrainConfig
    run_dir: Path
    stamp: dict[str, Any]  # what is hashed
    hash: str

    @property
    def label(self) -> str:
        return f"{self.row.name} seed {self.seed}"


# ------------------------------------------------------------------------------------------------
def expand_dotted(data: dict, where: str) -> dict:
    """``{"train.epochs": 3, "model": {"depth": 6}}`` → nested dicts (dotted keys at any level)."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of keys, got {data!r}")
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = expand_dotted(value, f"{where}.{key}")
        node = out
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"{where}: key {key} conflicts with another key of {part}")
        node[leaf] = merge(node[leaf], value) if isinstance(node.get(leaf), dict) and isinstance(value, dict) else value
    return out


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def as_overrides(data: dict) -> list[str]:
    """Nested/dotted dict → ``["key=value", ...]`` for the protocols (values as JSON, which YAML reads back)."""
    return [f"{key}={json.dumps(value)}" for key, value in flatten(expand_dotted(data, "overrides")).items()]


def protocol_overrides(plan: "Plan", protocol: str, seed: int) -> dict[str, Any]:
    """The flat ``{key: value}`` a protocol gets for a run of ``seed``: its seed, the plan's common keys,
    then the protocol's own (later wins)."""
    ev = plan.evaluations
    return {"seed": seed, **flatten(expand_dotted(ev.common, "evaluations.common")),
            **flatten(expand_dotted(getattr(ev, protocol).overrides, f"evaluations.{protocol}.overrides"))}


def config_hash(stamp: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def slug(name: str) -> str:
    """A row name as an ASCII folder name: ``MixedAE λ=0.1`` → ``mixedae-lambda-0.1``."""
    return re.sub(r"[^a-z0-9_.]+", "-", name.strip().lower().replace("λ", "lambda")).strip("-.")


def hashed_config(cfg: PretrainConfig) -> dict[str, Any]:
    """The resolved config minus the keys in :data:`UNHASHED` and unset (None) options, so a key added to
    the config later with a None default leaves the hash of earlier runs alone."""
    data = to_dict(cfg)
    for key in UNHASHED:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return {section: {k: v for k, v in values.items() if v is not None} if isinstance(values, dict) else values
            for section, values in data.items()}


# ------------------------------------------------------------------------------------------------
def load_plan(path: str | Path, data: Optional[str] = None, overrides: Sequence[str] = ()) -> Plan:
    """Read, override and validate a plan; every mistake is a one-line UserError naming the plan."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"plan {path} does not exist; see configs/study/ (smoke.yaml, quick.yaml, full.yaml)")
    try:
        raw = read_yaml(path)
        if "budget" in raw:  # nested before the key=value overrides merge into it
            raw["budget"] = expand_dotted(raw["budget"], "budget")
        raw = merge(raw, parse_overrides(list(overrides)))
        if data is not None:
            raw["data"] = data
        rows = raw.pop("rows", None)
        if not isinstance(rows, list) or not rows:
            raise UserError("no rows; add a list `rows:` of {name, config or preset, overrides}")
        plan = from_dict(Plan, raw)
        plan.path = str(path)
        plan.rows = [_row(r, i) for i, r in enumerate(rows)]
        _check(plan)
    except UserError as e:
        raise UserError(f"plan {path}: {e}") from None
    return plan


def _row(data: Any, index: int) -> RowSpec:
    if not isinstance(data, dict):
        raise UserError(f"rows[{index}] must be a mapping with a name, got {data!r}")
    row = from_dict(RowSpec, data, f"rows[{index}].")
    if not row.name.strip():
        raise UserError(f"rows[{index}] has no name; give every row a name")
    if row.config is None and row.preset is None:
        raise UserError(f"row {row.name!r} has neither config nor preset; give one (e.g. preset: mae_vit_tiny_patch4_32)")
    row.overrides = expand_dotted(row.overrides, f"row {row.name!r} overrides")
    return row


def _check(plan: Plan) -> None:
    if not plan.name.strip():
        raise UserError("no name; add `name: <plan name>`")
    if not plan.seeds:
        raise UserError("seeds is empty; give at least one seed, e.g. seeds: [0]")
    names = [r.name for r in plan.rows]
    slugs = [slug(n) for n in names]
    for i, s in enumerate(slugs):
        if not s or slugs.index(s) != i:
            raise UserError(f"row name {names[i]!r} is empty or clashes with {names[slugs.index(s)]!r} as a folder name; "
                            "rename one")
    for where, keys in [("budget", plan.budget)] + [(f"row {r.name!r} overrides", r.overrides) for r in plan.rows]:
        owned = [k for k in ("output_dir", "train.seed") if k in flatten(keys)]
        if owned:
            raise UserError(f"{where} set {owned[0]}, which the study sets itself; use seeds: [...] for train.seed "
                            "and --output-dir for the folders")
    for row in plan.rows:
        if row.seeds is not None and not row.seeds:
            raise UserError(f"row {row.name!r} has an empty seeds list; remove it or give seeds")
    if plan.speed_reference is not None and plan.speed_reference not in names:
        raise UserError(f"speed_reference {plan.speed_reference!r} is not a row; use one of: {', '.join(names)}")
    ev = plan.evaluations
    if plan.pretrain_data not in PRETRAIN_DATA:
        raise UserError(f"pretrain_data={plan.pretrain_data!r}: use one of {', '.join(PRETRAIN_DATA)}")
    if plan.pretrain_data == "classification_subset" and not ev.train_subset:
        raise UserError("pretrain_data: classification_subset needs evaluations.train_subset (the subset's size)")
    if ev.attention.enabled and ev.segmentation_data != "synthetic":
        raise UserError("the attention measure needs object masks: set evaluations.segmentation_data: synthetic or "
                        "evaluations.attention.enabled: false")
    if (ev.classification_data or plan.data) == "synthetic" and (ev.train_subset or ev.val_subset):
        raise UserError("train_subset/val_subset apply to image folders; for synthetic data set the number of scenes "
                        "with evaluations.common: {data.num_samples: N}")
    for protocol, cls in PROTOCOLS.items():
        try:
            load_eval_config(cls, "synthetic", as_overrides(protocol_overrides(plan, protocol, 0)))
        except UserError as e:
            raise UserError(f"evaluations.{protocol}: {e}") from None
    for spec in {plan.data, ev.classification_data or plan.data, ev.segmentation_data}:
        if spec != "synthetic" and parse_spec(spec) is None and not Path(spec).expanduser().exists():
            raise UserError(f"data {spec} does not exist; pass --data with CIFAR-10 (an ImageFolder tree, its "
                            ".tar.gz, or cifar10:ROOT for torchvision's copy), e.g. --data ~/data/cifar10.tar.gz")


def seeds_of(plan: Plan, row: RowSpec) -> list[int]:
    return list(row.seeds if row.seeds is not None else plan.seeds)


def resolve_config(plan: Plan, row: RowSpec, seed: int, run_dir: Path) -> PretrainConfig:
    """The row's pre-training config for ``seed`` (layers in the module docstring)."""
    base = read_yaml(Path(plan.path).parent / row.config) if row.config else {}
    layers = [plan.budget, {"data": {"spec": plan.data}}, {"model": {"name": row.preset}} if row.preset else {},
              row.overrides, {"train": {"seed": seed}, "output_dir": str(run_dir)}]
    for layer in layers:
        base = merge(base, layer)
    return from_dict(PretrainConfig, base)


def model_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    return cfg.model.create_kwargs(cfg.data.image_size)


def plan_jobs(plan: Plan, out_dir: Path) -> list[Job]:
    """Every (row, seed) with its folder ``<out>/runs/<row>/seed-<s>``, resolved config and hash.

    Builds each row's model once (cheap for the small presets) so a bad option fails here.
    """
    jobs = []
    for row in plan.rows:
        encoder_args = None
        for seed in seeds_of(plan, row):
            run_dir = out_dir / "runs" / slug(row.name) / f"seed-{seed}"
            try:
                cfg = resolve_config(plan, row, seed, run_dir)
                if encoder_args is None:
                    model = create_model(cfg.model.name, **model_kwargs(cfg))
                    encoder_args = model.encoder.timm_kwargs()
                    if cfg.train.batch_size % model.group_size:
                        raise UserError(f"train.batch_size={cfg.train.batch_size} is not a multiple of the group size "
                                        f"{model.group_size}")
            except (UserError, ValueError) as e:
                raise UserError(f"plan {plan.path}: row {row.name!r}: {e}") from None
            stamp = ({"random_init": True, "model_args": encoder_args, "seed": seed} if row.random_init
                     else hashed_config(cfg))
            if plan.pretrain_data != "data" and not row.random_init:
                stamp["pretrain_data"] = plan.pretrain_data  # (left out by default: older studies keep their hash)
            jobs.append(Job(row, seed, cfg, run_dir, stamp, config_hash(stamp)))
    return jobs
