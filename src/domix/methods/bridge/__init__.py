"""DoMIX stage 2: domain modules concatenated with a trainable bridge (docs/methods.md §1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from domix.lazy import lazy_attributes
from domix.methods.bridge.config import BridgeConfig

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

    from torch import nn

    from domix.engine.loop import StepHook
    from domix.methods.base import TaskMethod
    from domix.pretraining.config import PretrainConfig

__all__ = ["BridgeConfig", "BridgedLinear", "compose", "fold"]
__getattr__ = lazy_attributes(__name__, {"BridgedLinear": "domix.methods.bridge.layer", "compose": "domix.methods.bridge.model",
                                         "fold": "domix.methods.bridge.model"})


def pretrain_modules(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Stage 1 of DoMIX: one LoRA module per domain (pretrain.py; imported on first use: settings stay torch-free)."""
    from domix.methods.bridge.pretrain import pretrain_modules as train

    return train(cfg, overwrite, on_step)


def bridge() -> TaskMethod:
    """A fresh domix task method: modules and a trainable bridge (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.bridge.method import Bridge

    return Bridge()


def fixed_bridge() -> TaskMethod:
    """A fresh domix_fixed task method: the bridge frozen at init (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.bridge.method import FixedBridge

    return FixedBridge()


def cat() -> TaskMethod:
    """A fresh cat task method: the bridge frozen at I (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.bridge.method import Cat

    return Cat()


def stage1_model(model: nn.Module, folder: str | Path) -> AbstractContextManager[nn.Module]:
    """The base language model with a domain's PEFT module as stage 1 trained them (a context manager; pretrain.py, imported on first use)."""
    from domix.methods.bridge.pretrain import stage1_model as load

    return load(model, folder)
