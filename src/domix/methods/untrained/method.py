"""The ``base`` task method: every weight frozen, nothing added. ``domix instruct --method base`` scores the causal LM as
it is (dev and, for a labelled task, test), so a comparison's zero-shot row is a run like the others."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from domix.methods.base import TaskMethod


class Untrained(TaskMethod):
    def build(self, model: nn.Module, head: list[str], pieces: list, cfg) -> tuple[nn.Module, list[dict]]:
        model.requires_grad_(False)
        return model, []

    def record(self, model: nn.Module, pieces: list, cfg, probe=None) -> dict:
        return {**super().record(model, pieces, cfg, probe), "layers": []}

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        pass  # nothing of its own: the folder's record names the base, which is the whole model

    def load(self, model: nn.Module, record: dict, folder: Path) -> nn.Module:
        return model

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        return model
