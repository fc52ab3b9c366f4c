"""The training loop of one domain module: batches, steps, checkpoints, evaluation.

Every step is a pure function of (seed, step, weights, optimizer state): the data order
comes from a per-epoch permutation, the masks and dropout from a per-step seed. So a run
that resumes from a checkpoint ends with exactly the module an uninterrupted run makes.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from domix import checkpoint
from domix.base_model import set_gradient_checkpointing
from domix.batches import IGNORE_INDEX, lm_batch, lm_loss
from domix.distributed import DataParallel
from domix.errors import DomixError
from domix.pretrain.config import PretrainConfig

# Called after every step with (domain, steps done, loss, model); tests use it to look inside.
StepHook = Callable[[str, int, float, nn.Module], None]


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int
    losses: list[float] = field(default_factory=list)  # one per step
    train_seconds: float = 0.0


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def domain_seed(seed: int, domain: str) -> int:
    """The seed of ``domain``'s initial weights, derived from (run seed, domain name).

    Each domain's module must hold its own subspace: seeded alike, every domain's A would start (and,
    after a short pre-training, stay) nearly equal, and a composition of them would span one domain's
    rank. Derived from the name, not the domain's position, so a domain starts the same alone, fused
    with others, in any order, or on another process.
    """
    digest = hashlib.sha256(f"domix-init:{seed}:{domain}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def total_steps(cfg: PretrainConfig, n_train: int) -> int:
    return cfg.steps if cfg.steps is not None else cfg.epochs * math.ceil(n_train / cfg.batch_size)


def batch_rows(n_train: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the training blocks in ``step``'s batch: a fresh shuffle every epoch."""
    per_epoch = math.ceil(n_train / batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    return perm[i * batch_size : (i + 1) * batch_size]


def predicted_tokens(labels: torch.Tensor, objective: str) -> int:
    if objective == "clm":
        labels = labels[:, 1:]  # the model shifts: the first token is never predicted
    return int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate(model: nn.Module, blocks: torch.Tensor, objective: str, tokenizer, cfg: PretrainConfig, device) -> float:
    """Mean loss per predicted token over ``blocks``, with fixed masks (same before and after)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, -(10**6)))
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], cfg.batch_size):
        batch = lm_batch(blocks[start : start + cfg.batch_size], objective, tokenizer, generator, cfg.mlm_probability)
        n = predicted_tokens(batch["labels"], objective)
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def train_domain(
    model: nn.Module,
    domain: str,
    train_blocks: torch.Tensor,
    objective: str,
    tokenizer,
    cfg: PretrainConfig,
    device: torch.device,
    checkpoint_path: Path,
    on_step: StepHook | None = None,
    writer=None,
    dp: DataParallel | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` on one domain, resuming from a checkpoint.

    With ``dp``, this process takes its slice of every batch; the loss is normalised by the
    whole batch's token count and gradients are summed over the group, so every process of
    the group takes the step a single process would.
    """
    params = _trainable(model)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    n_steps = total_steps(cfg, train_blocks.shape[0])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * n_steps), n_steps)
    result = checkpoint.restore(checkpoint_path, params, optimizer, scheduler)
    if result is None:
        result = TrainResult(steps=0, tokens_seen=0)
    else:
        print(f"domix: resuming domain {domain!r} from step {result.steps} ({checkpoint_path})")

    with checkpointed(model, cfg.gradient_checkpointing):
        model.train()
        bar = tqdm(total=n_steps, initial=result.steps, desc=domain, unit="step", dynamic_ncols=True, disable=None, mininterval=1.0)
        session_start, session_tokens = time.perf_counter(), 0
        while result.steps < n_steps:
            step = result.steps
            blocks = train_blocks[batch_rows(train_blocks.shape[0], cfg.batch_size, cfg.seed, step)]
            batch = lm_batch(blocks, objective, tokenizer, torch.Generator().manual_seed(step_seed(cfg.seed, step)), cfg.mlm_probability)
            torch.manual_seed(step_seed(cfg.seed, step))  # LoRA and model dropout
            t0 = time.perf_counter()
            if dp is None:
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            else:
                loss = _slice_loss(model, batch, objective, dp, device)
            if not torch.isfinite(loss):
                raise DomixError(_non_finite(domain, step + 1, "loss", checkpoint_path, cfg))
            loss.backward()
            if dp is not None:
                for p in params.values():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dp.all_reduce_(p.grad)
                loss = dp.all_reduce_(loss.detach())  # the whole batch's loss
            grad_norm = torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                raise DomixError(_non_finite(domain, step + 1, "gradient", checkpoint_path, cfg))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            result.steps += 1
            result.tokens_seen += blocks.numel()
            loss_value = loss.item()
            result.losses.append(loss_value)
            result.train_seconds += time.perf_counter() - t0
            session_tokens += blocks.numel()
            tokens_per_s = session_tokens / max(time.perf_counter() - session_start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, result.steps)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], result.steps)
                writer.add_scalar("train/tokens_per_s", tokens_per_s, result.steps)
            if result.steps % cfg.checkpoint_every == 0 and result.steps < n_steps and (dp is None or dp.is_leader):
                checkpoint.save(checkpoint_path, params, optimizer, scheduler, result)
            if on_step is not None:
                on_step(domain, result.steps, loss_value, model)
        bar.close()
    return result


@contextmanager
def checkpointed(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Activation checkpointing while training (--gradient-checkpointing): each block's activations
    are recomputed in backward instead of kept, for far less memory and about a third more compute.
    Random state is replayed in the recomputation, so the trained weights do not change."""
    if not enabled:
        yield
        return
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise DomixError(f"{type(target).__name__} does not support gradient checkpointing; drop --gradient-checkpointing")
    set_gradient_checkpointing(target, True)
    try:
        yield
    finally:
        set_gradient_checkpointing(target, False)


def _slice_loss(model: nn.Module, batch: dict[str, torch.Tensor], objective: str, dp: DataParallel, device) -> torch.Tensor:
    """This process's share of the batch loss: its rows' token losses over the batch's token count."""
    count = predicted_tokens(batch["labels"], objective)
    ids, labels = batch["input_ids"][dp.index :: dp.size], batch["labels"][dp.index :: dp.size]
    if ids.shape[0] == 0:  # a short last batch can leave a process without rows
        return torch.zeros((), device=device, requires_grad=True)
    logits = model(input_ids=ids.to(device)).logits
    return lm_loss(logits, labels, objective, reduction="sum") / max(count, 1)


def _non_finite(domain: str, step: int, what: str, checkpoint_path: Path, cfg: PretrainConfig) -> str:
    kept = f"the last good checkpoint is kept at {checkpoint_path}" if checkpoint_path.exists() else "no checkpoint was written yet"
    return (
        f"non-finite {what} at step {step} of domain {domain!r}; training stopped and {kept}. "
        f"Lower --lr (now {cfg.lr:g}) or check the base model and corpus, then rerun"
    )
