"""The interface of a stage-2 (task) method: what the finetune and instruct recipes ask of it.

A recipe loads the base (with a new classification head, or the causal LM), then asks the
method, named by ``cfg.method`` through :mod:`domix.methods.registry`:

1. ``pieces(cfg)``: what it composes, read from ``cfg.modules`` (LoRA modules, MixDA adapters, MoDE
   experts; none for a method from the base);
2. ``check_base(pieces, fingerprint)``: refuse pieces trained on another base;
3. ``build(model, head, pieces, cfg)``: make the model trainable its way; returns the model (PEFT
   wraps it) and the optimizer's parameter groups;
4. ``place(model, cfg)``: after the model went to its device (MoDE puts experts elsewhere);
5. ``record(model, pieces, cfg, probe)``: what the run's record adds (layers, bridge, gates);
6. ``save(model, record, folder)`` / ``load(model, record, folder)``: the task model's weights, written
   into and rebuilt from its folder onto the base (``whole_model``: the folder holds every weight
   and loads without the base);
7. ``plain(model, record)``: the same model in the base's own architecture, for export, or a
   DomixError saying why there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from domix.store import DomainModule, check_base, gather_modules

TASK_FILE = "domix_task.json"  # a task model folder's record: what it is, how to rebuild it, how it scored
EXPORT_FILE = "domix_export.json"  # in an exported folder: where it came from, the max length it was trained with
WEIGHTS_FILE = "task_model.safetensors"  # what a method adds to the base, when it is not a PEFT adapter or a whole model


@dataclass
class Probe:
    """Inputs a method may run the trained model on for its record (MixDA's and MoDE's gate weights)."""

    rows: list[list[int]]
    pad_id: int
    device: torch.device


def describe_modules(modules: list[DomainModule]) -> list[dict]:
    return [{"name": m.name, "path": str(m.path), "rank": m.rank, "base_fingerprint": m.base_fingerprint} for m in modules]


class TaskMethod:
    """Defaults: LoRA modules of a store as pieces (if given), nothing to place, nothing to record."""

    name = ""  # set by the registry
    whole_model = False  # the saved folder holds every weight (loads without the base)

    def pieces(self, cfg) -> list:
        """LoRA modules: a store's (all, ``domains``, or ``init_module``), then any PEFT adapter folders (instruct's ``adapters``)."""
        domains = [cfg.init_module] if getattr(cfg, "init_module", None) else cfg.domains
        return gather_modules(cfg.modules, domains, getattr(cfg, "adapters", None))

    def check_base(self, pieces: list, fingerprint: str) -> None:
        check_base(pieces, fingerprint)

    def build(self, model: nn.Module, head: list[str], pieces: list, cfg) -> tuple[nn.Module, list[dict]]:
        raise NotImplementedError

    def place(self, model: nn.Module, cfg) -> None:
        pass

    def record(self, model: nn.Module, pieces: list, cfg, probe: Probe | None = None) -> dict:
        return {"modules": describe_modules(pieces)}

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        raise NotImplementedError

    def load(self, model: nn.Module, record: dict, folder: Path) -> nn.Module:
        raise NotImplementedError

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        raise NotImplementedError


def head_groups(model: nn.Module, head: list[str], cfg, extra: list[nn.Parameter] = ()) -> dict:
    """The optimizer group of the head (made trainable) and ``extra``, at the run's lr and weight decay."""
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)
    return {"params": list(extra) + [params[n] for n in head], "lr": cfg.lr, "weight_decay": cfg.weight_decay}


def save_head_tensors(model: nn.Module, head: list[str], tensors: dict[str, torch.Tensor], folder: Path, file: str) -> None:
    """Write ``tensors`` and the head's weights to ``folder/file`` (safetensors)."""
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    for name in head:
        tensors[name] = params[name].detach().cpu().contiguous()
    save_file(tensors, str(folder / file))


@torch.no_grad()
def load_head(model: nn.Module, head: list[str], tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name in head:
        params[name].copy_(tensors[name])
