"""LoRA, LoRA-FA and DoRA through PEFT: the parameter-efficient baselines (docs/methods.md §4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domix.methods.base import TaskMethod


def lora() -> TaskMethod:
    """A fresh PEFT LoRA task method (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.peft.method import Lora

    return Lora()


def lora_fa() -> TaskMethod:
    """A fresh LoRA-FA task method (A frozen) (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.peft.method import LoraFA

    return LoraFA()


def dora() -> TaskMethod:
    """A fresh PEFT DoRA task method (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.peft.method import Dora

    return Dora()
