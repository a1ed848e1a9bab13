"""Data-parallel training under ``torchrun``: gloo on CPU, nccl on GPUs. One process per worker, each takes
its share of every global batch; DistributedDataParallel averages the gradients, so the result matches a
single process training on the whole batch."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from edgekd.errors import DistributedStateError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This worker's share of a global batch (strided, so shares differ by at most one sample)."""
        return indices[self.rank :: self.size]

    def wrap(self, module: nn.Module) -> nn.Module:
        return module if self.size == 1 else nn.parallel.DistributedDataParallel(module)

    def sync_buffers(self, module: nn.Module) -> None:
        """BatchNorm running statistics from worker 0 everywhere (DDP syncs them only at the next forward), so
        every worker validates the same model and takes the same early-stop decision."""
        if self.size > 1:
            for b in module.buffers():
                dist.broadcast(b, 0)

    def check_in_sync(self, module: nn.Module) -> None:
        """Every worker must end with the same weights; a cheap checksum all-gather proves it."""
        if self.size == 1:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
            mine = torch.stack(
                [flat.sum(), flat.pow(2).sum(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum()]
            )
        sums = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(sums, mine)
        if any(not torch.allclose(s, sums[0], rtol=1e-9, atol=0) for s in sums):
            raise DistributedStateError(
                f"the {self.size} workers ended with different weights",
                "report this: DistributedDataParallel should keep them identical",
            )

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def join() -> World:
    """The process group torchrun describes through its environment, or a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Left to the interpreter's exit, gloo's threads were sometimes still joinable when their destructor
        # ran: the worker died with "terminate called without an active exception" after finishing its work.
        atexit.register(_leave)
    return World(dist.get_rank(), dist.get_world_size())


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
