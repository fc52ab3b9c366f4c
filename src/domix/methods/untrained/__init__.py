"""The ``base`` row: the model as it is, nothing trained (an instruction task's zero-shot floor)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domix.methods.base import TaskMethod


def untrained() -> TaskMethod:
    """A fresh task method that trains nothing (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.untrained.method import Untrained

    return Untrained()
