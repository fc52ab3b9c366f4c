"""MoDE (docs/methods.md §3): per-domain expert layers beside blocks of the frozen backbone, mixed by per-token gates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from domix.lazy import lazy_attributes
from domix.methods.mode.config import BlockPlan, plan_blocks

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

    from torch import nn

    from domix.engine.loop import StepHook
    from domix.methods.base import TaskMethod
    from domix.pretraining.config import PretrainConfig

_MODEL = ("add_domain", "build_task_model", "expert_blocks", "gate_weights", "insert_blocks", "load_expert_store", "place",
          "recording_gates", "remove_blocks")
__all__ = ["BlockPlan", "ExpertBlock", "BlockSlot", "plan_blocks", *_MODEL]
__getattr__ = lazy_attributes(__name__, {"ExpertBlock": "domix.methods.mode.layer", "BlockSlot": "domix.methods.mode.layer",
                                         **{name: "domix.methods.mode.model" for name in _MODEL}})


def pretrain_mode(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Stage 1 of MoDE: each domain's experts (pretrain.py; imported on first use: settings stay torch-free)."""
    from domix.methods.mode.pretrain import pretrain_mode as train

    return train(cfg, overwrite, on_step)


def mode() -> TaskMethod:
    """A fresh MoDE task method: a gate over the experts (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.mode.method import MoDE

    return MoDE()


def stage1_model(model: nn.Module, folder: str | Path) -> AbstractContextManager[nn.Module]:
    """The base language model with a domain's experts and gates as stage 1 trained them (a context manager; model.py, imported on first use)."""
    from domix.methods.mode.model import stage1_model as load

    return load(model, folder)
