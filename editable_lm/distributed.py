"""torch.distributed for training and evaluation: one process per rank, launched by torchrun (gloo on CPU, NCCL on
CUDA), data parallel over the outer batch and sharded by edit. Without torchrun's environment everything here is the
one-process path: rank 0 of 1, and no collective runs.

MAML's outer step differentiates through the inner loop with `functional_call`, which `DistributedDataParallel`
cannot wrap (it does not support higher-order gradients: PyTorch issues 47562, 63929), so the outer gradients are
averaged after the backward with one all-reduce over a flat buffer (`average_gradients`).
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from editable_lm.errors import EditLMError

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its environment) with 2+ ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (once); return (rank, world size). NCCL with a device per local rank
    when CUDA is present, gloo otherwise; (0, 1) without a launcher."""
    if not launched():
        return 0, 1
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
        except (RuntimeError, ValueError) as exc:
            raise EditLMError(f"torch.distributed: cannot join the process group ({exc})") from exc
    return dist.get_rank(), dist.get_world_size()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share, round-robin (item i on rank i mod world): shares differ by at most one item."""
    return list(items[rank::world])


def gather_shards(mine: list[T], n_items: int) -> list[T] | None:
    """On rank 0, every rank's `shard` results put back in the original item order; None on the other ranks. Each
    result must be picklable (rows of numbers and strings: nothing a rank did not make itself is unpickled)."""
    rank, world = rank_and_world()
    if world == 1:
        return list(mine)
    parts: list[list[T] | None] = [None] * world if rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if rank != 0:
        return None
    out: list[T] = [None] * n_items  # type: ignore[list-item]
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def average_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks: one all-reduce over one flat buffer (a missing gradient
    counts as zero, so every rank reduces the same buffer)."""
    _, world = rank_and_world()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(parameters, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
