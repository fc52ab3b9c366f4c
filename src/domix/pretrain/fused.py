"""Fused domain pre-training: K domain LoRA modules trained at once over one frozen base.

Each step's batch stacks rows of every unfinished domain. Every targeted layer runs the
base weight once over the whole batch and each domain's LoRA pair over that domain's rows
only. Each domain keeps its own loss, optimizer, schedule, gradient clipping, data order
and masks, so its module is the one a separate run makes (tested to 1e-5 in float64; the
base model's own dropout, where it has any, draws its masks over the fused batch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from domix import atomic
from domix.batches import lm_batch, lm_loss
from domix.bridge.model import set_submodule
from domix.errors import DomixError
from domix.pretrain.config import PretrainConfig
from domix.pretrain.loop import (
    StepHook, TrainResult, batch_rows, checkpointed, evaluate, predicted_tokens, step_seed, total_steps,
)


class RowSegments:
    """Which rows of the current batch belong to which domain: [(domain index, start, end)]."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int, int | None]] = []

    def only(self, k: int) -> None:
        self.spans = [(k, 0, None)]  # the whole batch is domain k (evaluation)


class FusedLoRALinear(nn.Module):
    """A frozen linear layer with one LoRA pair per domain, each applied to its own rows."""

    def __init__(self, base: nn.Linear, pairs: list[tuple[torch.Tensor, torch.Tensor]], scaling: float,
                 dropout: float, segments: RowSegments):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ParameterList([nn.Parameter(a.detach().clone()) for a, _ in pairs])
        self.lora_B = nn.ParameterList([nn.Parameter(b.detach().clone()) for _, b in pairs])
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.segments = segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        spans = self.segments.spans
        if not spans:
            return y
        # split, not slicing: the backward of a slice writes a full-size zero gradient per domain
        chunks = x.split([(end if end is not None else x.shape[0]) - start for _, start, end in spans])
        parts = [(self.dropout(rows.to(self.lora_A[k].dtype)) @ self.lora_A[k].t() @ self.lora_B[k].t()) * self.scaling
                 for (k, _, _), rows in zip(spans, chunks)]
        return y + (parts[0] if len(parts) == 1 else torch.cat(parts)).to(y.dtype)


def save_domains(path: Path, step: int, names: list[str], params, optimizers, schedulers, results) -> None:
    """Checkpoint a fused run: the group step, and every domain's weights, optimizer, schedule and progress."""
    atomic.torch_save(path, {"step": step, "domains": {n: {
        "params": [p.detach().cpu() for p in params[n]], "optimizer": optimizers[n].state_dict(),
        "scheduler": schedulers[n].state_dict(), "result": results[n]} for n in names}})


def restore_domains(path: Path, names: list[str], params, optimizers, schedulers, results, label: str = "fused") -> int:
    """Load a :func:`save_domains` checkpoint into ``names`` (a domain it lacks starts afresh); the group
    step it was at, 0 without a checkpoint."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    for n in names:
        saved = state["domains"].get(n)
        if saved is None:
            continue
        with torch.no_grad():
            for p, value in zip(params[n], saved["params"]):
                p.copy_(value)
        optimizers[n].load_state_dict(saved["optimizer"])
        schedulers[n].load_state_dict(saved["scheduler"])
        results[n] = saved["result"]
    print(f"domix: resuming {label} domains {names} from step {state['step']} ({path})")
    return state["step"]


def install(model: nn.Module, initial: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]], scaling: float,
            dropout: float) -> tuple[RowSegments, dict[str, FusedLoRALinear]]:
    """Replace each adapted layer with a fused one holding every domain's pair (in ``initial``'s order)."""
    segments = RowSegments()
    names = list(initial)
    layers = {}
    for layer in initial[names[0]]:
        base = model.get_submodule(layer)
        fused = FusedLoRALinear(base, [initial[n][layer] for n in names], scaling, dropout, segments)
        set_submodule(model, layer, fused.to(base.weight.device))
        layers[layer] = fused
    return segments, layers


def uninstall(model: nn.Module, layers: dict[str, FusedLoRALinear]) -> None:
    for name, layer in layers.items():
        set_submodule(model, name, layer.base_layer)


def train_fused(
    model: nn.Module,
    initial: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]],
    train: dict[str, torch.Tensor],
    heldout: dict[str, torch.Tensor],
    objective: str,
    tokenizer,
    cfg: PretrainConfig,
    device: torch.device,
    checkpoint_path: Path,
    on_done: Callable[[str, dict[str, tuple[torch.Tensor, torch.Tensor]], TrainResult, float | None], None],
    on_step: StepHook | None = None,
) -> None:
    """Train the domains of ``initial`` (name -> layer -> (A, B)) together on ``model``.

    ``on_done(name, pairs, result, heldout_loss_after)`` is called as each domain finishes.
    """
    names = list(initial)
    segments, layers = install(model, initial, cfg.alpha / cfg.rank, cfg.dropout)
    try:
        params = {n: [p for layer in layers.values() for p in (layer.lora_A[k], layer.lora_B[k])] for k, n in enumerate(names)}
        from transformers import get_linear_schedule_with_warmup

        steps = {n: total_steps(cfg, train[n].shape[0]) for n in names}
        optimizers = {n: torch.optim.AdamW(params[n], lr=cfg.lr, weight_decay=cfg.weight_decay) for n in names}
        schedulers = {n: get_linear_schedule_with_warmup(optimizers[n], int(cfg.warmup_ratio * steps[n]), steps[n]) for n in names}
        results = {n: TrainResult(steps=0, tokens_seen=0) for n in names}
        step = restore_domains(checkpoint_path, names, params, optimizers, schedulers, results)

        with checkpointed(model, cfg.gradient_checkpointing):
            model.train()
            bar = tqdm(total=max(steps.values()), initial=step, desc="+".join(names), unit="step", dynamic_ncols=True, disable=None, mininterval=1.0)
            started, tokens = time.perf_counter(), 0
            while any(results[n].steps < steps[n] for n in names):
                active = [k for k, n in enumerate(names) if results[n].steps < steps[n]]
                batches, spans, start = [], [], 0
                for k in active:
                    n = names[k]
                    own = results[n].steps  # a domain's data order and masks follow its own step count
                    blocks = train[n][batch_rows(train[n].shape[0], cfg.batch_size, cfg.seed, own)]
                    generator = torch.Generator().manual_seed(step_seed(cfg.seed, own))
                    batches.append(lm_batch(blocks, objective, tokenizer, generator, cfg.mlm_probability))
                    spans.append((k, start, start + blocks.shape[0]))
                    start += blocks.shape[0]
                segments.spans = spans
                torch.manual_seed(step_seed(cfg.seed, step))  # dropout
                t0 = time.perf_counter()
                input_ids = torch.cat([b["input_ids"] for b in batches]).to(device)
                logits = model(input_ids=input_ids).logits
                # one cross-entropy over the fused batch, then each domain's mean over its own rows
                labels = torch.cat([b["labels"] for b in batches])
                token_losses = lm_loss(logits, labels, objective, reduction="none").view(labels.shape[0], -1)
                losses = [token_losses[s:e].sum() / max(predicted_tokens(labels[s:e], objective), 1) for _, s, e in spans]
                for (k, _, _), loss in zip(spans, losses):
                    if not torch.isfinite(loss):
                        raise DomixError(f"non-finite loss at step {step + 1} of domain {names[k]!r}; training stopped "
                                         f"and the last checkpoint is kept at {checkpoint_path}. Lower --lr (now {cfg.lr:g}) and rerun")
                torch.stack(losses).sum().backward()  # domain k's parameters see only loss k
                elapsed = time.perf_counter() - t0
                for (k, s, e), loss in zip(spans, losses):
                    n = names[k]
                    torch.nn.utils.clip_grad_norm_(params[n], cfg.max_grad_norm)
                    optimizers[n].step()
                    schedulers[n].step()
                    optimizers[n].zero_grad(set_to_none=True)
                    results[n].steps += 1
                    results[n].tokens_seen += (e - s) * cfg.seq_len
                    results[n].losses.append(loss.item())
                    results[n].train_seconds += elapsed * (e - s) / start  # the shared step, split by rows
                step += 1
                tokens += start * cfg.seq_len
                bar.update(1)
                bar.set_postfix(loss=" ".join(f"{l.item():.3f}" for l in losses), tok_s=f"{tokens / (time.perf_counter() - started):,.0f}")
                if on_step is not None:
                    for (k, _, _), loss in zip(spans, losses):
                        on_step(names[k], results[names[k]].steps, loss.item(), model)
                for k in active:
                    n = names[k]
                    if results[n].steps == steps[n]:
                        segments.only(k)
                        after = evaluate(model, heldout[n], objective, tokenizer, cfg, device) if len(heldout[n]) else None
                        model.train()
                        pairs = {name: (layer.lora_A[k].detach().cpu().clone(), layer.lora_B[k].detach().cpu().clone()) for name, layer in layers.items()}
                        on_done(n, pairs, results[n], after)
                if step % cfg.checkpoint_every == 0 and any(results[n].steps < steps[n] for n in names):
                    save_domains(checkpoint_path, step, names, params, optimizers, schedulers, results)
            bar.close()
    finally:
        uninstall(model, layers)
