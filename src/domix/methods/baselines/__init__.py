"""The baselines that pre-train one model over all the domains: ncl_lora, joint_lora, ncl_full."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domix.engine.loop import StepHook
    from domix.pretraining.config import PretrainConfig


def pretrain_baseline(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Stage 1 of ncl_lora, joint_lora and ncl_full (pretrain.py; imported on first use: settings stay torch-free)."""
    from domix.methods.baselines.pretrain import pretrain_baseline as train

    return train(cfg, overwrite, on_step)
