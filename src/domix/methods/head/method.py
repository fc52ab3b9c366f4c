"""The ``head`` task method: the base frozen, only the new classification head trains."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from domix.methods.base import WEIGHTS_FILE, TaskMethod, head_groups, load_head, save_head_tensors


class Head(TaskMethod):
    def build(self, model: nn.Module, head: list[str], pieces: list, cfg) -> tuple[nn.Module, list[dict]]:
        model.requires_grad_(False)
        return model, [head_groups(model, head, cfg)]

    def record(self, model: nn.Module, pieces: list, cfg, probe=None) -> dict:
        return {**super().record(model, pieces, cfg, probe), "layers": []}

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        save_head_tensors(model, record["head"], {}, folder, WEIGHTS_FILE)

    def load(self, model: nn.Module, record: dict, folder: Path) -> nn.Module:
        from safetensors.torch import load_file

        load_head(model, record["head"], load_file(str(folder / WEIGHTS_FILE)))
        return model

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        return model  # the base's architecture already: its weights plus the head
