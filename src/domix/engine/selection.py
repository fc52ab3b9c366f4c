"""Training a task model in epochs, the epoch with the best dev score kept: the loop domix finetune and
domix instruct share (pre-training keeps its last step instead: engine.loop.train_domain, engine.fused).

AdamW over the method's parameter groups, a linear schedule with warm-up, the engine's guarded steps
(engine.loop.train: seeded batches, checkpoints, exact resume); at the end of every epoch the recipe's
dev score decides whether this epoch's trainable weights are kept, and the kept ones are put back into
the model when training ends.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from domix.engine.distributed import DataParallel
from domix.engine.loop import Loop, StepHook, TrainResult, train
from domix.errors import DomixError


@dataclass
class DevScore:
    """One epoch's dev evaluation, as the recipe scores it."""

    value: float  # what selects the kept epoch
    entry: dict  # the epoch's line of the dev history in the record
    said: str  # what the console says about it
    logged: dict[str, float] = field(default_factory=dict)  # TensorBoard scalars (dev/NAME)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights (the epoch kept so far), in host memory."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def train_epochs(model: nn.Module, groups: list[dict], cfg: Any, label: str, examples: int,
                 step_loss: Callable[[int], tuple[torch.Tensor, int]], score_dev: Callable[[int], DevScore], ckpt_dir: Path,
                 on_step: StepHook | None, dp: DataParallel | None = None, *, higher_is_better: bool,
                 warmup_steps: int | None = None, before: Callable[[], dict] | None = None) -> TrainResult:
    """Train ``cfg.epochs`` passes over ``examples`` training examples (``step_loss(step)``: the step's loss and
    tokens); after each pass ``score_dev(epoch)`` scores dev, and the best pass (the highest ``value``, or the lowest)
    is kept and put back into ``model`` at the end. ``warmup_steps`` overrides ``cfg.warmup_ratio``; ``before()``
    adds to the record what is measured before the first step (instruct's dev loss of the base). Returns the
    progress; its ``extra`` holds history, best_epoch, best_score, best_state, dev_seconds."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(groups)
    per_epoch = math.ceil(examples / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warmup = warmup_steps if warmup_steps is not None else int(cfg.warmup_ratio * total)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(warmup, total), total)
    better = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)

    def after_step(progress: TrainResult, log) -> bool:
        if progress.steps % per_epoch:
            return False
        state, started = progress.extra, time.perf_counter()  # the end of an epoch: score dev, keep the best, checkpoint
        if "best_loss" in state:  # the checkpoint of an instruct run from before this loop named it so
            state["best_score"] = state.pop("best_loss")
        score = score_dev(len(state["history"]) + 1)
        state["history"].append(score.entry)
        for name, value in score.logged.items():
            log(f"dev/{name}", value)
        if better(score.value, state["best_score"]):
            state.update(best_epoch=len(state["history"]), best_score=score.value, best_state=trainable_state(model))
        state["dev_seconds"] = state.get("dev_seconds", 0.0) + time.perf_counter() - started
        tqdm.write(f"domix: epoch {len(state['history'])}: {score.said}")
        return True

    def fresh() -> TrainResult:
        return TrainResult(extra={"history": [], "best_epoch": 0, "best_score": -math.inf if higher_is_better else math.inf,
                                  "best_state": None, "dev_seconds": 0.0, **(before() if before else {})})

    loop = Loop(label, total, cfg.seed, cfg.lr, cfg.max_grad_norm, cfg.checkpoint_every, cfg.gradient_checkpointing)
    progress = train(model, optimizer, scheduler, loop, step_loss, ckpt_dir / "state.pt", on_step, ckpt_dir.parent / "tensorboard",
                     after_step=after_step, fresh=fresh, dp=dp)
    state = progress.extra
    if state["best_state"] is None:  # every dev score was NaN
        raise DomixError("the dev score was never finite; check the data and lower --lr")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["best_state"].items():
            params[name].copy_(value)
    return progress
