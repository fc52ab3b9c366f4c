"""Full fine-tuning: every weight trains (the upper baseline of docs/methods.md §4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domix.methods.base import TaskMethod


def full() -> TaskMethod:
    """A fresh full fine-tuning task method (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.full.method import Full

    return Full()
