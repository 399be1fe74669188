"""Run a study: train every (row, seed) that is not done, evaluate it, write the tables.

Layout of the output folder::

    plan.yaml                       the plan as run (after --data and key=value overrides)
    results.json  results.md  curves.png
    data/<name>-subset-<hash>/      classification subset (symlinks), when the plan asks for one
    runs/<row>/seed-<s>/            a pre-training run folder (or encoder.pt of a random-init row)
        study.json                  the hashed config, status and wall times of this (row, seed)
        eval/<protocol>/            results.json + study.json (the evaluation's own hash)
        eval/features/              feature cache shared by k-NN and the linear probe

**Done** means: the stage's ``results.json`` exists and its ``study.json`` holds the hash of the
same resolved config (pre-training: the whole config except the keys in
:data:`mixedae.study.plan.UNHASHED`; evaluation: protocol, data, the run's hash and the overrides except those
in :data:`mixedae.study.plan.EVAL_UNHASHED`, which do not change results).
A finished stage is skipped, a pre-training run without ``results.json`` continues from its
``last.pt`` (``--resume auto``), an evaluation without ``results.json`` is run again.
**A changed row is refused**, never overwritten: when a folder's ``study.json`` holds another hash,
the study stops before any work with one line naming the folder and the changed keys; use a new
``--output-dir``, or delete that folder to redo it. A run whose loss diverges is recorded as
diverged (its evaluations are skipped, the table says so) and the study goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml

from ..config import PretrainConfig, to_dict
from ..engine.pretrain import TrainingDiverged, pretrain
from ..errors import UserError
from ..eval import features as feature_cache
from ..eval.attention_objects import run_attention_objects
from ..eval.knn import run_knn
from ..eval.linprobe import run_linprobe
from ..eval.patch_cosine import run_patch_cosine
from ..eval.random_init import CHECKPOINT as RANDOM_CHECKPOINT, STAMP as RANDOM_STAMP, write_random_encoder
from ..eval.segprobe import run_segprobe
from ..io import atomic_write_json, atomic_write_text
from .plan import CLASSIFICATION, EVAL_UNHASHED, Job, Plan, as_overrides, config_hash, flatten, plan_jobs, protocol_overrides
from .subset import class_subset
from .table import read_json, write_tables

STAMP = "study.json"
RUNNERS = {"knn": run_knn, "linprobe": run_linprobe, "segprobe": run_segprobe, "attention": run_attention_objects,
           "patch_cosine": run_patch_cosine}
HookFactory = Callable[[Any], Sequence[Callable]]


def changed_keys(old: dict, new: dict, limit: int = 3) -> str:
    """``"train.epochs: 4 → 5, model.tau: 0.25 → 0.1"`` (the first ``limit``)."""
    a, b = flatten(old), flatten(new)
    diffs = [f"{k}: {a.get(k, '—')} → {b.get(k, '—')}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return ", ".join(diffs[:limit]) + (f" (+{len(diffs) - limit} more)" if len(diffs) > limit else "") or "unknown"


def weights_of(job: Job) -> Path:
    return job.run_dir / RANDOM_CHECKPOINT if job.row.random_init else job.run_dir


class StudyRunner:
    """Trains and evaluates the jobs of a plan into ``out_dir``; see the module docstring."""

    def __init__(self, plan: Plan, out_dir: str | Path, epoch_hooks: HookFactory = lambda cfg: (),
                 only: Optional[Sequence[str]] = None, command: Optional[str] = None,
                 log: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        self.plan, self.out, self.hooks, self.log = plan, Path(out_dir), epoch_hooks, log
        self.command = command
        self.jobs = plan_jobs(plan, self.out)
        names = [r.name for r in plan.rows]
        unknown = [n for n in only or () if n not in names]
        if unknown:
            raise UserError(f"--rows: {unknown[0]!r} is not a row of plan {plan.name}; rows: {', '.join(names)}")
        self.todo = [j for j in self.jobs if only is None or j.row.name in only]  # the table lists every job
        self.protocols = plan.evaluations.enabled()
        self.data: dict[str, str] = {}  # the spec each kind of protocol reads
        self.data_id: dict[str, dict] = {}  # what identifies that data in the evaluation stamps
        self.eval_stamps: dict[tuple[int, str], dict] = {}

    # ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self._data_identity()
        for i, job in enumerate(self.jobs):
            for protocol in self.protocols:
                self.eval_stamps[i, protocol] = self._eval_stamp(job, protocol)
        self._check_stamps()  # before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(to_dict(self.plan), sort_keys=False, allow_unicode=True), self.out / "plan.yaml")
        self._prepare_data()
        start = time.time()
        for i, job in enumerate(self.jobs):
            if job not in self.todo:
                continue
            prefix = f"[{i + 1}/{len(self.jobs)}] {job.label}"
            if self._train(job, prefix):
                for protocol in self.protocols:
                    self._evaluate(job, protocol, self.eval_stamps[i, protocol], prefix)
            feature_cache._MEMORY.clear()  # hold one run's features at a time (eval.features keeps no other handle)
            write_tables(self.plan, self.jobs, self.out, self.machine(), self.command)
        self.log(f"study {self.plan.name}: {len(self.todo)} of {len(self.jobs)} runs in {time.time() - start:.0f} s -> "
                 f"{self.out / 'results.md'}")
        return write_tables(self.plan, self.jobs, self.out, self.machine(), self.command)

    @staticmethod
    def machine() -> dict[str, Any]:
        """Where the study ran (its last invocation), for the tables."""
        return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "torch": torch.__version__,
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "threads": torch.get_num_threads(), "python": sys.version.split()[0]}

    # ---------------------------------------------------------------------------------------
    def _data_identity(self) -> None:
        """What identifies each kind of protocol's data in the evaluation stamps."""
        ev = self.plan.evaluations
        self.data_id = {"classification": {"spec": ev.classification_data or self.plan.data,
                                           "train_subset": ev.train_subset, "val_subset": ev.val_subset,
                                           "subset_seed": ev.subset_seed},
                        "segmentation": {"spec": ev.segmentation_data}}

    def _prepare_data(self) -> None:
        """The spec each kind of protocol reads, building the classification subset (once) if the plan asks."""
        ev = self.plan.evaluations
        cls = ev.classification_data or self.plan.data
        if ev.train_subset or ev.val_subset:
            self.log(f"classification data: subset of {cls} (train {ev.train_subset or 'all'}, "
                     f"val {ev.val_subset or 'all'})")
            cls = str(class_subset(cls, self.out / "data", ev.train_subset, ev.val_subset, ev.subset_seed))
        self.data = {"classification": cls, "segmentation": ev.segmentation_data}

    def _pretrain_config(self, job: Job) -> PretrainConfig:
        """``job.cfg``, reading the classification subset (its train split) if the plan pre-trains on it."""
        if self.plan.pretrain_data != "classification_subset":
            return job.cfg
        return dataclasses.replace(job.cfg, data=dataclasses.replace(job.cfg.data, spec=self.data["classification"]))

    def _eval_stamp(self, job: Job, protocol: str) -> dict[str, Any]:
        """What an evaluation's results depend on (paths inside the output folder left out)."""
        kind = "classification" if protocol in CLASSIFICATION else "segmentation"
        overrides = protocol_overrides(self.plan, protocol, job.seed)
        return {"protocol": protocol, "data": self.data_id[kind], "run": job.hash,
                "overrides": {k: v for k, v in overrides.items() if k not in EVAL_UNHASHED}}

    def _check_stamps(self) -> None:
        """Refuse, before any work, folders made from another config (module docstring)."""
        for i, job in enumerate(self.jobs):
            stamp = read_json(job.run_dir / STAMP)
            if stamp is None:
                if job.run_dir.is_dir() and any(job.run_dir.iterdir()):
                    raise UserError(f"{job.run_dir} exists but was not written by a study (no {STAMP}); "
                                    "use another --output-dir or delete that folder")
                continue
            if stamp.get("hash") != job.hash:
                raise UserError(f"{job.run_dir} holds {job.label} made from another config "
                                f"({changed_keys(stamp.get('config', {}), job.stamp)}); use a new --output-dir, or "
                                "delete that folder to train it again")
            for protocol in self.protocols:
                folder = job.run_dir / "eval" / protocol
                old = read_json(folder / STAMP)
                new = self.eval_stamps[i, protocol]
                if old is not None and old.get("hash") != config_hash(new):
                    raise UserError(f"{folder} holds a {protocol} evaluation made with other settings "
                                    f"({changed_keys(old.get('config', {}), new)}); use a new --output-dir, or delete "
                                    f"the {protocol} folders (rm -r {self.out}/runs/*/seed-*/eval/{protocol}) to "
                                    "evaluate again")

    # ---------------------------------------------------------------------------------------
    def _train(self, job: Job, prefix: str) -> bool:
        """Train (or write the untrained encoder of) ``job`` unless done; False if it diverged."""
        stamp_path = job.run_dir / STAMP
        stamp = read_json(stamp_path) or {"row": job.row.name, "seed": job.seed, "hash": job.hash,
                                          "config": job.stamp, "wall_s": {}}
        if stamp.get("status") == "diverged":
            self.log(f"{prefix} · train: skipped, diverged earlier ({stamp.get('error')}); delete {job.run_dir} to retry")
            return False
        stage = "random init" if job.row.random_init else "train"
        done = job.run_dir / (RANDOM_STAMP if job.row.random_init else "results.json")
        if done.is_file() and stamp_path.is_file():
            self.log(f"{prefix} · {stage}: done, skipped")
            return True
        atomic_write_json(stamp, stamp_path)  # first: marks the folder as this config's
        resuming = (job.run_dir / "last.pt").is_file()
        self.log(f"{prefix} · {stage}: " + ("resuming from last.pt" if resuming else "start"))
        start = time.time()
        try:
            if job.row.random_init:
                write_random_encoder(job.stamp["model_args"], job.seed, job.run_dir, f"plan row {job.row.name}",
                                     job.cfg.model.name)
            else:
                cfg = self._pretrain_config(job)
                pretrain(cfg, resume="auto", epoch_hooks=self.hooks(cfg))
        except TrainingDiverged as e:
            stamp.update(status="diverged", error=str(e))
            atomic_write_json(stamp, stamp_path)
            self.log(f"{prefix} · {stage}: DIVERGED ({e}); its evaluations are skipped")
            return False
        stamp["wall_s"]["train"] = time.time() - start
        stamp["resumed"] = resuming
        atomic_write_json(stamp, stamp_path)
        self.log(f"{prefix} · {stage}: done in {stamp['wall_s']['train']:.0f} s")
        return True

    def _evaluate(self, job: Job, protocol: str, stamp: dict[str, Any], prefix: str) -> None:
        folder = job.run_dir / "eval" / protocol
        if (folder / "results.json").is_file() and read_json(folder / STAMP) is not None:
            self.log(f"{prefix} · {protocol}: done, skipped")
            return
        self.log(f"{prefix} · {protocol}: start")
        start = time.time()
        data = self.data["classification" if protocol in CLASSIFICATION else "segmentation"]
        cache = f"cache_dir={json.dumps(str(job.run_dir / 'eval' / 'features'))}"  # k-NN and linear probe share it
        overrides = [cache, *as_overrides(protocol_overrides(self.plan, protocol, job.seed))]
        RUNNERS[protocol](weights_of(job), data, overrides=overrides, output_dir=folder)
        wall = time.time() - start
        atomic_write_json({"hash": config_hash(stamp), "config": stamp, "wall_s": wall}, folder / STAMP)
        run_stamp = read_json(job.run_dir / STAMP)
        run_stamp["wall_s"][protocol] = wall
        atomic_write_json(run_stamp, job.run_dir / STAMP)
        self.log(f"{prefix} · {protocol}: done in {wall:.0f} s")


def run_study(plan: Plan, out_dir: str | Path, epoch_hooks: HookFactory = lambda cfg: (),
              only: Optional[Sequence[str]] = None, command: Optional[str] = None) -> dict[str, Any]:
    """Train, evaluate and tabulate ``plan`` (the rows named in ``only``, default all) into ``out_dir``;
    ``command`` is recorded in the tables. Returns the results.json content."""
    return StudyRunner(plan, out_dir, epoch_hooks, only, command).run()
