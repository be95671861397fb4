"""torch.distributed for training and evaluation: one process per rank, launched by torchrun (gloo on CPU, NCCL on
CUDA), data parallel over the outer batch and sharded by edit. Without torchrun's environment everything here is the
one-process path: rank 0 of 1, and no collective runs.

MAML's outer step differentiates through the inner loop with `functional_call`, which `DistributedDataParallel`
cannot wrap (it does not support higher-order gradients: PyTorch issues 47562, 63929), so the outer gradients are
summed after the backward with one all-reduce over a flat buffer (`sum_gradients`), each rank's loss being its
part of the global one (`mean_share`, `replicated_share`).
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

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


def is_main() -> bool:
    """Rank 0: the one rank that writes outputs, checkpoints, curves and messages."""
    return rank_and_world()[0] == 0


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share, round-robin (item i on rank i mod world): shares differ by at most one item."""
    return list(items[rank::world])


def my_share(items: Sequence[T], what: str) -> list[T]:
    """This rank's `shard` of `items`; an error naming `what` if a rank would get none."""
    rank, world = rank_and_world()
    if len(items) < world:
        raise EditLMError(f"{what}: {len(items)} to share among {world} ranks; use fewer processes (run.nproc)")
    return shard(items, rank, world)


def gather_shards(mine: list[T], n_items: int) -> list[T]:
    """Every rank's `shard` results put back in the original item order, on every rank. Each result must be
    picklable (rows of numbers and strings: nothing a rank did not make itself is unpickled)."""
    _, world = rank_and_world()
    if world == 1:
        return list(mine)
    parts: list[list[T]] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(parts, mine)
    out: list[T] = [None] * n_items  # type: ignore[list-item]
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def mean_share(loss: Tensor, count: Tensor) -> Tensor:
    """`loss`, a mean over this rank's `count` items (tokens), as its part of the mean over every rank's items:
    scaled by count / total, so the ranks' parts sum to the global mean. One process: `loss` itself."""
    _, world = rank_and_world()
    if world == 1:
        return loss
    total = count.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    return loss * (count.to(torch.float64) / total).to(loss.dtype)


def replicated_share(loss: Tensor) -> Tensor:
    """A loss every rank computes alike (the one edit of a step) as this rank's part: 1/world of it."""
    _, world = rank_and_world()
    return loss if world == 1 else loss / world


def total(value: Tensor) -> Tensor:
    """The sum over the ranks of a detached value (the parts of a loss, for the curves)."""
    _, world = rank_and_world()
    if world == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def sum_gradients(parameters: Sequence[Tensor]) -> None:
    """Replace each gradient by its sum over the ranks (each rank's loss being its part of the global loss): one
    all-reduce per dtype over a flat buffer (a missing gradient counts as zero, so every rank reduces the same
    buffers)."""
    _, world = rank_and_world()
    if world == 1:
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in parameters:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(group, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
