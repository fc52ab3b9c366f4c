"""The pre-training recipe (``domix pretrain``): check the settings, run the method's stage-1 trainer.

What a method writes is its own (``domix.methods.<name>``): one LoRA module per domain (domix), one
MixDA adapter or MoDE expert set per domain, or one model over all the domains (the baselines).
Every trainer keeps the same run-folder rules (``engine.runfolder``): a finished run is never
replaced without --overwrite, and rerunning the same command resumes an unfinished one.
"""

from __future__ import annotations

from domix.engine.loop import StepHook
from domix.methods.registry import stage1
from domix.pretraining.config import PretrainConfig


def pretrain(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Run stage 1 of ``cfg.method``; returns {each folder it wrote: its manifest}.

    For domix, mixda and mode that is one folder per domain; for a baseline (ncl_lora, joint_lora,
    ncl_full) the one model it trains over all the domains.
    """
    cfg.validate()
    return stage1(cfg.method).trainer(cfg, overwrite, on_step)
