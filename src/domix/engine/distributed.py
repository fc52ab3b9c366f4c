"""Several processes (``torchrun`` or ``accelerate launch``), started by accelerate.

Pre-training spreads domains over the ranks round-robin; a rank trains its share fused, with no
gradient averaging: different domains share nothing. With more ranks than domains, rank r
trains domain r mod K together with the other ranks of that domain, data-parallel. Fine-tuning and
instruction tuning run data-parallel over all the ranks (:meth:`Ranks.everyone`). Data-parallel
ranks each take a slice of every batch, and their gradients are summed, so every rank takes the
step one process would take on the whole batch (the same weights, up to float summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from domix.errors import DomixError


@dataclass
class DataParallel:
    """This rank's place among the ranks that share one domain."""

    group: object  # a torch.distributed process group
    index: int
    size: int

    @property
    def is_leader(self) -> bool:
        return self.index == 0

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, group=self.group)
        return tensor


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, domains: list[str]) -> tuple[list[str], DataParallel | None]:
        """This rank's domains, and its data-parallel group when several ranks share one."""
        if self.world <= len(domains) or not domains:
            return domains[self.rank :: self.world], None
        members = {d: [r for r in range(self.world) if r % len(domains) == i] for i, d in enumerate(domains)}
        groups = {d: dist.new_group(rs) for d, rs in members.items()}  # every rank makes every group, in order
        mine = domains[self.rank % len(domains)]
        return [mine], DataParallel(groups[mine], members[mine].index(self.rank), len(members[mine]))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def everyone(self) -> DataParallel | None:
        """All the ranks as one data-parallel group (None in a single process)."""
        return DataParallel(dist.group.WORLD, self.rank, self.world) if self.world > 1 else None

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (by local rank) when the run is on GPUs."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.world > 1 else device


def require_one_process(method: str, why: str) -> None:
    """Refuse a launch over several processes (torchrun, accelerate) of a method that runs in one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DomixError(f"--method {method} {why} and runs in one process; launch it without torchrun or accelerate "
                         "(only --method domix spreads domains over processes)")


def process_group() -> Ranks:
    """The launcher's ranks, with the process group started by accelerate (NCCL on GPUs, gloo on CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Ranks()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Ranks(rank=state.process_index, world=state.num_processes, local_rank=state.local_process_index)
