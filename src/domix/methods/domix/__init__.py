"""DoMIX stage 2: domain modules concatenated with a trainable bridge (docs/methods.md §1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from domix.lazy import lazy_attributes
from domix.methods.domix.config import BridgeConfig

if TYPE_CHECKING:
    from domix.engine.loop import StepHook
    from domix.methods.base import TaskMethod
    from domix.pretrain.config import PretrainConfig

__all__ = ["BridgeConfig", "BridgedLinear", "compose", "fold"]
__getattr__ = lazy_attributes(__name__, {"BridgedLinear": "domix.methods.domix.layer", "compose": "domix.methods.domix.model",
                                         "fold": "domix.methods.domix.model"})


def pretrain_modules(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Stage 1 of DoMIX: one LoRA module per domain (pretrain.py; imported on first use: settings stay torch-free)."""
    from domix.methods.domix.pretrain import pretrain_modules as train

    return train(cfg, overwrite, on_step)


def bridge() -> TaskMethod:
    """A fresh domix task method: modules and a trainable bridge (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.domix.method import Bridge

    return Bridge()


def fixed_bridge() -> TaskMethod:
    """A fresh domix_fixed task method: the bridge frozen at init (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.domix.method import FixedBridge

    return FixedBridge()


def cat() -> TaskMethod:
    """A fresh cat task method: the bridge frozen at I (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.domix.method import Cat

    return Cat()
