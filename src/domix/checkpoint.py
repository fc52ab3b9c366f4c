"""Training checkpoints: trainable weights, optimizer, schedule and progress in one atomic file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from domix import atomic


def save(path: Path, params: dict[str, nn.Parameter], optimizer, scheduler, progress: Any) -> None:
    atomic.torch_save(path, {
        "params": {n: p.detach().cpu() for n, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
    })


def restore(path: Path, params: dict[str, nn.Parameter], optimizer, scheduler) -> Any | None:
    """Load a checkpoint into ``params``, ``optimizer`` and ``scheduler``; its progress, or None if there is none."""
    if not Path(path).exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["progress"]
