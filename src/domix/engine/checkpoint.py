"""Training checkpoints: trainable weights, optimizer, schedule and progress in one atomic file.

Every loop writes and reads its checkpoints here (one domain or task: :func:`save` / :func:`restore`;
several fused domains: ``engine.fused``; a baseline's finished phases: the same :func:`write` /
:func:`read`), so there is one format: a ``torch.save`` dict, written atomically.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from domix import atomic

# where the progress records of checkpoints written by earlier versions now live, so they still resume
_MOVED = {"domix.pretrain.loop": "domix.engine.loop", "domix.mixda.pretrain": "domix.methods.mixda.pretrain"}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return super().find_class(_MOVED.get(module, module), name)


class _pickle:  # what torch.load needs of a pickle module
    Unpickler = _Unpickler
    load = staticmethod(lambda f, **kw: _Unpickler(f, **kw).load())


def write(path: Path, state: dict) -> None:
    atomic.torch_save(path, state)


def read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle)


def save(path: Path, params: dict[str, nn.Parameter], optimizer, scheduler, progress: Any) -> None:
    write(path, {
        "params": {n: p.detach().cpu() for n, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
    })


def restore(path: Path, params: dict[str, nn.Parameter], optimizer, scheduler) -> Any | None:
    """Load a checkpoint into ``params``, ``optimizer`` and ``scheduler``; its progress, or None if there is none."""
    if not Path(path).exists():
        return None
    state = read(path)
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["progress"]
