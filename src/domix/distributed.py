"""Several processes (``torchrun`` or ``accelerate launch``): which domains each one trains.

Domains are spread over the ranks round-robin; a rank trains its share fused, with no
gradient averaging: different domains share nothing. With more ranks than domains, rank r
trains domain r mod K together with the other ranks of that domain, data-parallel: each
takes a slice of every batch and their gradients are summed within the domain's group.
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


def require_one_process(method: str, why: str) -> None:
    """Refuse a launch over several processes (torchrun, accelerate) of a method that runs in one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DomixError(f"--method {method} {why} and runs in one process; launch it without torchrun or accelerate "
                         "(only --method domix spreads domains over processes)")


def process_group() -> Ranks:
    """The launcher's ranks (from its environment), with the process group started."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
