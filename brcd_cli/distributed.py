"""Running the same commands under ``torchrun``: process-group set-up and the few collectives brcd needs.

torchrun starts one process per worker and tells each its place through
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). Without them brcd runs as a single process and
nothing here costs anything. Backends: gloo on CPU, nccl when each process
has a GPU of its own.

A failure on one rank must not leave the others waiting forever at the next
collective, so every sharded step ends with :func:`agree`, which shares each
rank's outcome and raises the first error on every rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from .errors import BrcdError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the workers (a world of one when not under torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """The contiguous slice [lo, hi) of n items this rank owns; sizes differ by at most one.

        Contiguous shards concatenated in rank order give back the original
        order, which is what makes a merged result identical to a single run.
        """
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise BrcdError(f"environment variable {name} must be an integer, got {value!r}") from None


def world_from_env() -> World:
    """Read torchrun's variables; a world of one when they are absent."""
    size = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise BrcdError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=_int_env("LOCAL_RANK", 0), local_size=_int_env("LOCAL_WORLD_SIZE", size))


def init(world: Optional[World] = None) -> World:
    """Join the process group when running under torchrun (idempotent); returns this rank's World."""
    world = world or world_from_env()
    if world.distributed and not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and torch.cuda.device_count() >= world.local_size
        if use_nccl:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return world


def current() -> World:
    """The World of this process if it has joined a process group, else a world of one."""
    return world_from_env() if dist.is_available() and dist.is_initialized() else World()


def any_rank(world: World, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any: decisions such as stopping must be taken together."""
    if not world.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def device_of(world: World) -> torch.device:
    """The device this rank computes on: its own GPU under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def gather_objects(world: World, value: T) -> list[T]:
    """Every rank's value, in rank order, on every rank (small picklable values only: outcomes, counts)."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def broadcast(world: World, value: T) -> T:
    """Rank 0's value on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(world: World, action: Callable[[], T]) -> T:
    """Run ``action`` on every rank; if it fails anywhere, raise on every rank instead of hanging.

    A rank's own BrcdError is re-raised as is; the other ranks raise one that
    names the failing rank, so the user sees the cause from rank 0's output.
    """
    error: Optional[BaseException] = None
    result: Any = None
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 - whatever failed, the other ranks must hear of it
        error = exc
    outcomes = gather_objects(world, None if error is None else (type(error).__name__, str(error), getattr(error, "exit_code", 1)))
    if error is not None:
        raise error
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            failure = BrcdError(f"rank {rank} failed: {outcome[1]}")
            failure.exit_code = outcome[2]
            raise failure
    return result


class _GatherRows(torch.autograd.Function):
    """all_gather with a backward pass: each rank gets back the gradient of its own rows, summed over ranks.

    Written with all_reduce rather than reduce_scatter because gloo (the CPU
    backend) has no reduce_scatter.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd protocol
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (equal counts) in rank order, keeping the autograd graph.

    The backward pass sends each rank the gradient of its own rows, summed
    over the ranks' losses, so a loss computed on the gathered batch trains as
    if the whole batch had been on one process.
    """
    if not world.distributed:
        return tensor
    return _GatherRows.apply(tensor)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
