"""Only the classification head trains: what a task gets from the frozen base's features alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domix.methods.base import TaskMethod


def head() -> TaskMethod:
    """A fresh head-only task method (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.head.method import Head

    return Head()
