"""The pre-training loop (MAE, naive mixing, MixedAE): one code path for one CPU, one GPU or many
nodes under torchrun.

A run is a pure function of its config: data order, augmentation and masking/mixing noise are all
seeded by (seed, epoch, index | step) (see :mod:`mixedae.engine.sampling`), so ``--resume`` after a
kill, a 2-rank run and an accumulated run reproduce the uninterrupted single-process run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..amp import autocast, check_precision, describe_precision, grad_scaler, resolve_precision
from ..config import PretrainConfig, to_dict
from ..data import build_dataset, describe_dataset, resolve_stats
from ..data.transforms import to_channels
from ..distributed import (DistInfo, all_reduce_mean, all_reduce_min, barrier, cleanup_distributed, decide_on_main,
                           init_distributed)
from ..errors import UserError
from ..host_memory import keep_freed_memory
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text
from ..models import create_model
from ..progress import progress
from ..schedule import cosine_lr, set_lr
from .checkpoint import (FORMAT_VERSION, BatchLayout, gather_rng_states, load_resume_checkpoint, saved_batch_layout,
                         set_rng_state)
from .init_from import init_model
from .inputs import InputPipeline
from .logger import MetricsLogger, WandbSink, import_wandb
from .optim import build_optimizer, ensure_fused, step_if_finite
from .sampling import GlobalBatchSampler, step_noise

EpochHook = Callable[[nn.Module, int, Path], None]


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN/inf; that step was not applied and the last good checkpoint is kept."""


NO_STEP = torch.iinfo(torch.int64).max  # "no bad step yet" in the on-device record of the first bad step


def resolve_resume(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    """``auto`` → ``<run>/last.pt`` if it exists (else a fresh start); a path must exist. Without
    ``resume``, a run folder that already holds a ``last.pt`` is refused (a fresh start would
    overwrite its checkpoints and metrics).

    Looks at this process's filesystem: under torchrun, :class:`Pretrainer` asks rank 0 only and
    hands its answer to every rank.
    """
    if resume is None:
        if (run_dir / "last.pt").exists():
            raise UserError(f"{run_dir} already holds a run (last.pt); pass --resume auto to continue it, "
                            "or choose another --output-dir")
        return None
    if resume == "auto":
        last = run_dir / "last.pt"
        return last if last.exists() else None
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise UserError(f"--resume {resume}: no such checkpoint; pass auto, a run folder or a .pt file")
    return path


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Pretrainer:
    """Holds the state of one pre-training run; :meth:`run` trains to the end and returns results.

    Resuming (``resume``: ``auto``, a run folder or a checkpoint) is decided by rank 0 and every rank
    then loads that file (one error line if a rank cannot). It refuses a checkpoint written with
    another split of the effective batch (processes × ``train.batch_size`` × ``train.accum_steps``):
    that changes the steps per epoch, the data position and the lr. ``resume_anyway=True`` continues
    regardless, at the saved step count under the new batch (not a reproduction of the original run).
    """

    def __init__(self, cfg: PretrainConfig, dist_info: DistInfo, resume: Optional[str] = None,
                 epoch_hooks: Sequence[EpochHook] = (), resume_anyway: bool = False) -> None:
        self.cfg, self.dist, self.hooks = cfg, dist_info, tuple(epoch_hooks)
        self.device = dist_info.device
        self.run_dir = Path(cfg.output_dir)
        self.resume_anyway = resume_anyway
        if cfg.log.wandb:
            import_wandb()  # missing: one line now, not after the data is ready
        self.resume_path = decide_on_main(lambda: resolve_resume(resume, self.run_dir))
        resume_ckpt = load_resume_checkpoint(self.resume_path) if self.resume_path else None

        self.requested_precision = cfg.train.precision
        precision = resolve_precision(cfg.train.precision, self.device)
        check_precision(precision, self.device)
        self.cfg = cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
        tc = cfg.train
        torch.manual_seed(tc.seed + dist_info.rank)
        kwargs = cfg.model.create_kwargs(cfg.data.image_size)
        self.model = create_model(cfg.model.name, **kwargs)
        if cfg.model.init_from:
            if resume_ckpt is not None:
                summary = f"model.init_from ignored: resuming from {self.resume_path} (the checkpoint wins)"
            else:  # every rank loads the same file
                summary, identity = init_model(self.model, cfg.model.init_from)
                if dist_info.is_main:  # provenance, kept across resumes
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_json({"spec": cfg.model.init_from, **identity, "summary": summary},
                                      self.run_dir / "init_from.json")
            if dist_info.is_main:
                print(summary, file=sys.stderr)
        self.model.to(self.device)
        self.arch = {"name": cfg.model.name, "kwargs": kwargs}
        self.image_size = self.model.encoder.img_size
        self.stats = resolve_stats(self.model.encoder.in_chans, cfg.data.mean, cfg.data.std)
        if tc.batch_size % self.model.group_size:
            g = self.model.group_size
            raise UserError(
                f"train.batch_size={tc.batch_size} is not divisible by the group size G={g} "
                f"(mixing ratio 1/{g}); use a multiple of {g}"
            )

        self.dataset = build_dataset(
            cfg.data.spec, "train", image_size=self.image_size, num_samples=cfg.data.num_samples, seed=cfg.data.seed
        )
        if len(self.dataset):  # images the model cannot take: one line now, not from a worker mid-epoch
            to_channels(self.dataset[0][0], self.stats.channels)
        self.layout = BatchLayout(dist_info.world_size, tc.batch_size, tc.accum_steps)
        self.world_batch = tc.batch_size * dist_info.world_size
        self.eff_batch = self.layout.effective
        self.steps_per_epoch = len(self.dataset) // self.eff_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the dataset has {len(self.dataset)} images, fewer than one effective batch of {self.eff_batch} "
                "(batch_size × accum_steps × processes); lower train.batch_size or add data"
            )
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.last_step = min(self.total_steps, tc.max_steps) if tc.max_steps else self.total_steps
        oc = cfg.optim
        self.base_lr = oc.lr if oc.lr is not None else oc.blr * self.eff_batch / 256
        self.optimizer = build_optimizer(self.model, self.base_lr, oc.weight_decay, tuple(oc.betas))
        self.scaler = grad_scaler(tc.precision)
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None) \
            if dist_info.enabled else None
        # what runs the training forward; compiling a wrapper leaves self.model's state_dict keys alone
        self.train_module = torch.compile(self.ddp or self.model) if tc.compile else (self.ddp or self.model)

        self.sampler = GlobalBatchSampler(
            self.dataset, dist_info.world_size, dist_info.rank, tc.batch_size,
            self.steps_per_epoch * tc.accum_steps, seed=tc.seed,
        )
        self.inputs = InputPipeline(self.dataset, self.sampler, cfg.data, tc.batch_size, self.image_size, tc.seed,
                                    self.device, progress=dist_info.is_main and cfg.log.progress, stats=self.stats)
        self.step = 0
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        ensure_fused(self.optimizer)  # checkpoints written before the optimiser was fused
        self.first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=self.device)
        self.bad_values = torch.zeros(2, device=self.device)  # loss and gradient norm of the first bad step
        self.logger: Optional[MetricsLogger] = None

    # ---------------------------------------------------------------------------------------
    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt["arch"] != self.arch:
            was = {"name": ckpt["arch"]["name"], **ckpt["arch"]["kwargs"]}
            now = {"name": self.arch["name"], **self.arch["kwargs"]}
            diff = ", ".join(f"{k}: {was.get(k)} → {now.get(k)}" for k in sorted(was | now) if was.get(k) != now.get(k))
            raise UserError(
                f"{self.resume_path} was written for another model ({diff}); "
                "resume with the run's own config.yaml or start a new --output-dir"
            )
        self._check_batch_layout(saved_batch_layout(ckpt), int(ckpt["step"]))
        self.model.load_state_dict(ckpt["model"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        rng = ckpt.get("rng") or []
        if self.dist.rank < len(rng):
            set_rng_state(rng[self.dist.rank], self.device)

    def _check_batch_layout(self, saved: Optional[BatchLayout], step: int) -> None:
        """Refuse (or, with ``resume_anyway``, warn about) another split of the effective batch."""
        changes = saved.changes_to(self.layout) if saved is not None else []
        if not changes:
            return
        what = f"{self.resume_path} was trained with {saved}, this run has {self.layout} ({'; '.join(changes)})"
        if not self.resume_anyway:
            raise UserError(
                f"{what}: the steps per epoch, the data position and the lr would not match; resume with the "
                "same processes × train.batch_size and train.accum_steps, or pass --resume-anyway"
            )
        if self.dist.is_main:
            print(f"warning: --resume-anyway: {what}; continuing at step {step} with the new batch",
                  file=sys.stderr)

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "arch": self.arch,
            "config": to_dict(self.cfg),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": epoch,
            "step": self.step,
            "batch": self.layout.as_dict(),
            "rng": gather_rng_states(self.device),
        }

    def save(self, epoch: int, numbered: bool) -> None:
        """Refresh ``last.pt`` (and ``checkpoint-<epoch>.pt``) atomically; rank 0 writes."""
        state = self.checkpoint_state(epoch)  # collective: every rank takes part
        if self.dist.is_main:
            atomic_torch_save(state, self.run_dir / "last.pt")
            if numbered:
                atomic_torch_save(state, self.run_dir / f"checkpoint-{epoch}.pt")
        barrier()

    # ---------------------------------------------------------------------------------------
    def _loader(self, epoch: int, start_micro: int) -> Iterator[Tensor]:
        """This rank's micro-batches ``[b, C, H, W]`` of ``epoch`` on the device, from micro-step ``start_micro``."""
        return self.inputs.batches(epoch, start_micro)

    def train_step(self, batches: list[Tensor], with_metrics: bool = True) -> dict[str, Tensor]:
        """One optimiser step over ``accum_steps`` micro-batches ``[b, C, H, W]`` each.

        Returns this rank's metrics as device scalars: the micro-batch mean of the loss and the model's
        metrics, and ``grad_norm``. ``with_metrics=False`` (steps that are not logged) lets the model skip
        the metrics that cost time and do not change the loss (MixedAE's sampling accuracy); the loss and
        the update are the same.

        Nothing here waits for the device (no ``.item()``, ``.tolist()`` or ``float()`` of a result), so a
        GPU's queue never drains between steps. The non-finite guard works on the device instead:

        * ``finite = isfinite(loss) & isfinite(grad_norm)``; the optimiser step is fused AdamW told by
          ``found_inf = ~finite`` whether to skip (:func:`~mixedae.engine.optim.step_if_finite`), so a
          non-finite update is never applied, whether or not anyone looks at the flag.
        * the first step that was not finite (its number, loss and gradient norm) is recorded on the device;
          :meth:`check_finite` reads it at log steps, before every checkpoint and at the end of each epoch,
          and stops the run naming that step; ``last.pt`` therefore only ever holds finite weights.
        * under DDP the gradients, hence ``grad_norm``, are the same on every rank, so ranks agree on each
          skip (a non-finite loss almost always makes the gradients non-finite too; if one rank's loss alone
          were, the ranks could disagree on that step, and the run stops at the next check, before any
          checkpoint); the check all-reduces the first bad step (a minimum) so every rank stops together.
        * fp16 (CUDA): a non-finite gradient norm is the GradScaler's business (the step is skipped and the
          scale lowered, as usual); only a non-finite loss stops the run.
        """
        tc = self.cfg.train
        set_lr(self.optimizer, cosine_lr(self.step / self.steps_per_epoch, self.base_lr, self.cfg.optim.min_lr,
                                         self.cfg.optim.warmup_epochs, tc.epochs))
        rows = tc.batch_size // self.model.group_size
        noise = step_noise(tc.seed, self.step, rows, self.model.num_patches, tc.accum_steps, self.dist.world_size)
        sums: dict[str, Tensor] = {}
        for m, imgs in enumerate(batches):
            imgs = imgs.to(self.device, non_blocking=True)
            sync = m == len(batches) - 1 or self.ddp is None
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), autocast(tc.precision, self.device):
                loss, out = self.train_module(imgs, noise=noise[m, self.dist.rank].to(self.device),
                                              with_metrics=with_metrics)
            self.scaler.scale(loss / tc.accum_steps).backward()
            for key, value in {"loss": loss, **out["metrics"]}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / tc.accum_steps
        self.scaler.unscale_(self.optimizer)  # fp16 only
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if tc.clip_grad is None else \
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad)
        finite = torch.isfinite(sums["loss"]) & torch.isfinite(grad_norm)
        step_if_finite(self.optimizer, finite)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        fatal = ~torch.isfinite(sums["loss"]) if self.scaler.is_enabled() else ~finite
        first = fatal & (self.first_bad == NO_STEP)
        self.first_bad = torch.where(first, self.step, self.first_bad)
        self.bad_values = torch.where(first, torch.stack([sums["loss"], grad_norm.float()]), self.bad_values)
        return {**sums, "grad_norm": grad_norm.float()}

    def check_finite(self) -> None:
        """Stop the run (every rank) if a step since the start was not finite: TrainingDiverged naming the
        first such step. Reads the device-side record, so it synchronises; call it at log and checkpoint steps."""
        first_bad = int(all_reduce_min(self.first_bad))
        if first_bad == NO_STEP:
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss, grad_norm = self.bad_values.tolist()
        last_pt = self.run_dir / "last.pt"
        kept = f"the last good checkpoint {last_pt} is kept" if last_pt.exists() else "no checkpoint was written yet"
        what = f"gradient norm became {grad_norm}" if math.isfinite(loss) else f"loss became {loss}"
        raise TrainingDiverged(
            f"{what} at step {first_bad} (not applied); {kept}; "
            "lower optim.blr, set train.clip_grad=1.0 or use train.precision=fp32"
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train from the current step to the end of ``epoch`` (or ``train.max_steps``); log every N steps
        and once at the end; refresh ``last.pt`` every ``checkpoint.every_steps``. Returns the last logged
        step's metrics (averaged over ranks).

        Metrics stay on the device between log steps (the last step's values and the epoch's sums); they are
        all-reduced and read only when logged. Metrics a model computes on logged steps only (MixedAE's
        sampling accuracy, see :meth:`train_step`) are averaged over those steps in the epoch record.
        :meth:`check_finite` runs before each log and checkpoint, and the last step of the epoch is always
        logged, so the run's checkpoint after the epoch is checked too."""
        cfg, tc, main = self.cfg, self.cfg.train, self.dist.is_main
        in_epoch = self.step - epoch * self.steps_per_epoch
        loader = iter(self._loader(epoch, in_epoch * tc.accum_steps))
        self.model.train()
        epoch_end = min((epoch + 1) * self.steps_per_epoch, self.last_step)
        bar = progress(total=self.steps_per_epoch, initial=in_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                       enabled=main and cfg.log.progress)
        epoch_sums: dict[str, Tensor] = {}  # per metric: its sum over the steps that computed it ...
        epoch_counts: dict[str, int] = {}  # ... and how many steps those were
        steps, lr_sum, logged, window_start, window_images = 0, 0.0, {}, time.time(), 0
        while self.step < epoch_end:
            log_now = (self.step + 1) % cfg.log.every_steps == 0 or self.step + 1 == epoch_end
            metrics = self.train_step([next(loader) for _ in range(tc.accum_steps)], with_metrics=log_now)
            for name, value in metrics.items():
                epoch_sums[name] = epoch_sums[name] + value if name in epoch_sums else value
                epoch_counts[name] = epoch_counts.get(name, 0) + 1
            steps, window_images = steps + 1, window_images + self.eff_batch
            lr_sum += self.optimizer.param_groups[0]["lr"]
            bar.update(1)
            every = cfg.checkpoint.every_steps
            checkpoint_now = bool(every) and self.step % every == 0 and self.step < epoch_end
            if log_now:
                self.check_finite()
                names = list(metrics)
                values = torch.stack([*metrics.values(), *(epoch_sums[k] for k in names)])
                reduced = all_reduce_mean(values).tolist()
                logged = {**dict(zip(names, reduced[: len(names)])), "lr": self.optimizer.param_groups[0]["lr"]}
                now = time.time()
                ips = window_images / max(now - window_start, 1e-9)
                window_start, window_images = now, 0
                bar.set_postfix(loss=f"{logged['loss']:.4f}", img_s=f"{ips:.0f}")
                if main:
                    self.logger.log({"step": self.step, "epoch": self.step / self.steps_per_epoch, **logged,
                                     "img_per_s": ips, "memory_mb": memory_mb(self.device),
                                     "skipped_files": getattr(self.dataset, "num_skipped", 0)})
                if main and self.step == epoch_end:
                    means = {k: v / epoch_counts[k] for k, v in zip(names, reduced[len(names):])}
                    self.logger.log({"step": self.step, "epoch": self.step / self.steps_per_epoch, "kind": "epoch",
                                     **means, "lr": lr_sum / steps}, tb_prefix="epoch")
            elif checkpoint_now:
                self.check_finite()
            if checkpoint_now:
                self.save(epoch, numbered=False)
        bar.close()
        return logged

    # ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end (or ``train.max_steps``), with freed host memory kept in the process if configured."""
        with keep_freed_memory(self.cfg.train.keep_freed_memory) as host_memory:
            return self._run(host_memory)

    def _run(self, host_memory: str) -> dict[str, Any]:
        cfg, tc, main = self.cfg, self.cfg.train, self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resolved = yaml.safe_dump(to_dict(cfg), sort_keys=False)
            atomic_write_text(resolved, self.run_dir / "config.yaml")
            print(resolved, end="", file=sys.stderr)
            print(
                f"data: {describe_dataset(self.dataset)} | {self.steps_per_epoch} steps/epoch × {tc.epochs} epochs | "
                f"effective batch {self.eff_batch} | lr {self.base_lr:.3g} | {self.dist.world_size} process(es) on "
                f"{self.device}" + (f" | resumed at step {self.step} from {self.resume_path}" if self.step else ""),
                file=sys.stderr,
            )
            print(f"precision {describe_precision(self.requested_precision, tc.precision, self.device)} | input: "
                  f"{self.inputs.describe()}" + (" | torch.compile" if tc.compile else "") + f" | host memory: {host_memory}",
                  file=sys.stderr)
            lc = cfg.log
            wandb = WandbSink(self.run_dir, to_dict(cfg), lc.wandb_project, lc.wandb_run, lc.wandb_entity,
                              lc.wandb_mode) if lc.wandb else None
            self.logger = MetricsLogger(self.run_dir, tensorboard=lc.tensorboard, start_step=self.step, wandb=wandb)
        start_time, start_step, last = time.time(), self.step, {}
        while self.step < self.last_step:
            epoch = self.step // self.steps_per_epoch
            last = self.train_epoch(epoch)
            finished = self.step == (epoch + 1) * self.steps_per_epoch
            next_epoch = epoch + 1 if finished else epoch
            numbered = finished and (next_epoch % cfg.checkpoint.every_epochs == 0 or next_epoch == tc.epochs)
            self.save(next_epoch, numbered=numbered)
            if main and finished and (next_epoch % cfg.log.recon_every_epochs == 0 or next_epoch == tc.epochs):
                for hook in self.hooks:
                    hook(self.model, next_epoch, self.run_dir)
                self.logger.image("recon", self.run_dir / "recon" / f"epoch-{next_epoch}.png", self.step)
        elapsed = time.time() - start_time
        images_seen = (self.step - start_step) * self.eff_batch
        results = {
            "model": cfg.model.name,
            "arch": self.arch,
            "steps": self.step,
            "epochs_completed": self.step / self.steps_per_epoch,
            "images_per_step": self.eff_batch,
            "wall_time_s": elapsed,
            "img_per_s": images_seen / elapsed if elapsed > 0 else None,
            "final": last,
            "last_checkpoint": str(self.run_dir / "last.pt"),
            "skipped_files": getattr(self.dataset, "num_skipped", 0),
        }
        if main:
            atomic_write_json(results, self.run_dir / "results.json")
            self.logger.close()
        return results


def pretrain(cfg: PretrainConfig, resume: Optional[str] = None, epoch_hooks: Sequence[EpochHook] = (),
             resume_anyway: bool = False) -> dict:
    """Run pre-training as configured (joins the torchrun group when launched by torchrun); ``resume`` and
    ``resume_anyway`` as in :class:`Pretrainer`."""
    dist_info = init_distributed(cfg.train.device)
    try:
        return Pretrainer(cfg, dist_info, resume=resume, epoch_hooks=epoch_hooks, resume_anyway=resume_anyway).run()
    finally:
        cleanup_distributed()
