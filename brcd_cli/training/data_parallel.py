"""Multi-process training: each process runs the network on its share of the batch, every loss sees all of it.

Under torchrun, :func:`fit` wraps the model in DistributedDataParallel and
installs :class:`ShardedForward` as the model's forward for each step. Every
process holds the same global batch (same seed, same augmentation draws),
runs the network on its contiguous slice of the rows, and all-gathers the
logits with autograd. The loss - NT-Xent, BRCD, any other - is then computed
on the whole global batch, identically on every process: contrastive losses
need every sample's negatives, and a per-process loss would silently shrink
the batch the method was tuned for.

Gradients: each process's loss is the same L; the all-gather's backward hands
each process the summed gradient of its own rows (world_size x dL/drows) and
DDP averages parameter gradients over processes, so every parameter receives
exactly dL/dtheta, as in a single process with the same global batch.

BatchNorm layers in a trained backbone normalise over each process's slice
on the CPU (gloo); with one GPU per process (nccl) they are converted to
SyncBatchNorm, so the statistics span the global batch there too.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import World, all_gather_with_grad
from ..models import HashModel


class _LocalForward(nn.Module):
    """The model's own per-process forward, as the module DDP wraps (its parameters are the model's)."""

    def __init__(self, model: HashModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.local_forward(images)


class ShardedForward:
    """Callable installed with ``HashModel.data_parallel``: slice rows, DDP forward, gather rows."""

    def __init__(self, model: HashModel, world: World) -> None:
        self.world = world
        if dist.get_backend() == "nccl":
            nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
        self.ddp = DistributedDataParallel(_LocalForward(model))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        lo, hi = self.world.shard(n)
        local = self.ddp(images[lo:hi])
        return gather_rows(self.world, local, n)


def gather_rows(world: World, local: torch.Tensor, n: int) -> torch.Tensor:
    """Every process's rows in rank order; slices may differ in length by one, so pad, gather, trim."""
    sizes = [hi - lo for lo, hi in (World(rank=r, size=world.size).shard(n) for r in range(world.size))]
    longest = max(sizes)
    if local.shape[0] < longest:
        local = torch.cat([local, local.new_zeros((longest - local.shape[0], *local.shape[1:]))])
    gathered = all_gather_with_grad(world, local)
    return torch.cat([gathered[r * longest : r * longest + size] for r, size in enumerate(sizes)])
