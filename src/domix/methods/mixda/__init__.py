"""MixDA (Diao et al., ACL 2023; docs/methods.md §2): domain adapters beside the FFN, mixed by a gate per task."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

    from torch import nn

    from domix.engine.loop import StepHook
    from domix.methods.base import TaskMethod
    from domix.pretraining.config import PretrainConfig


def pretrain_mixda(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Stage 1 of MixDA: adapters with the knowledge loss (pretrain.py; imported on first use: settings stay torch-free)."""
    from domix.methods.mixda.pretrain import pretrain_mixda as train

    return train(cfg, overwrite, on_step)


def mixda() -> TaskMethod:
    """A fresh MixDA task method: a gate over the adapters (method.py; imported on first use: settings stay torch-free)."""
    from domix.methods.mixda.method import MixDA

    return MixDA()


def stage1_model(model: nn.Module, folder: str | Path) -> AbstractContextManager[nn.Module]:
    """The base language model with a domain's adapters and gates as stage 1 trained them (a context manager; model.py, imported on first use)."""
    from domix.methods.mixda.model import stage1_model as load

    return load(model, folder)
