"""torch.distributed set-up shared by pre-training and fine-tuning.

One code path for one CPU, one GPU and many nodes: under ``torchrun`` the environment carries
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and we join the process group (NCCL on CUDA, gloo on CPU);
without it we run as the single rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → the local CUDA device when there is one, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun; return this process's place."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def cleanup_distributed() -> None:
    if _initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all ranks (identity in a single process)."""
    if _initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_reduce_min(value: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum of a tensor over all ranks (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def barrier() -> None:
    if _initialized():
        dist.barrier()


def decide_on_main(decide: Callable[[], T]) -> T:
    """Run ``decide()`` on rank 0 only and hand its result to every rank (collective).

    Ranks on nodes without a shared filesystem can see different files; what rank 0 sees wins. If
    ``decide`` raises a :class:`UserError` on rank 0, every rank raises it, so none is left waiting.
    The result must be picklable.
    """
    if not _initialized():
        return decide()
    box: list[Any] = [None]
    failure = None
    if dist.get_rank() == 0:
        try:
            box = [("ok", decide())]
        except Exception as e:  # tell the other ranks before raising, so none waits for a result
            failure = e
            box = [("user" if isinstance(e, UserError) else "crash", str(e))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if failure is not None:
        raise failure
    if kind != "ok":
        raise UserError(value) if kind == "user" else RuntimeError(f"rank 0 failed: {value}")
    return value


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order (collective; ``[obj]`` in a single process)."""
    if not _initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
