"""The ``full`` task method: every weight trains; the task model is a plain transformers folder."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from domix.methods.base import TaskMethod


class Full(TaskMethod):
    whole_model = True

    def check_base(self, pieces: list, fingerprint: str) -> None:
        pass  # it may start from any model, a domain-pre-trained one (ncl_full) included

    def build(self, model: nn.Module, head: list[str], pieces: list, cfg) -> tuple[nn.Module, list[dict]]:
        model.requires_grad_(True)
        return model, [{"params": list(model.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        model.save_pretrained(folder)

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        return model
