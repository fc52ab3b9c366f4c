"""Fused domain pre-training: K domain LoRA modules trained at once over one frozen base.

Each step's batch stacks rows of every unfinished domain. Every targeted layer runs the
base weight once over the whole batch and each domain's LoRA pair over that domain's rows
only. Each domain keeps its own loss, optimizer, schedule, gradient clipping, data order
and masks, so its module is the one a separate run makes (tested to 1e-5 in float64; the
base model's own dropout, where it has any, draws its masks over the fused batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from domix.base_model import set_submodule
from domix.batches import lm_batch
from domix.lm_loss import lm_losses
from domix.pretrain.config import PretrainConfig
from domix.tokens import Blocks
from domix.engine.fused import FusedStep, RowSegments, train_domains
from domix.engine.loop import StepHook, TrainResult, batch_rows, evaluate, step_seed, total_steps


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
        domains = [k for k, _, _ in spans]
        sizes = [(end if end is not None else x.shape[0]) - start for _, start, end in spans]
        rows = self.dropout(x.to(self.lora_A[domains[0]].dtype))
        if len(set(sizes)) == 1 and rows.dtype == y.dtype:
            # equal shares (every step but an epoch's short last batch): one batched product over the
            # domains, rows grouped per domain, added into the base output as it is written (baddbmm),
            # instead of K small products, a concatenation and an addition, each a pass over the output
            a = torch.stack([self.lora_A[k] for k in domains]).transpose(1, 2)  # (K, in, r)
            b = torch.stack([self.lora_B[k] for k in domains]).transpose(1, 2) * self.scaling  # (K, r, out), scaled while small
            grouped = y.reshape(len(spans), -1, y.shape[-1])
            return torch.baddbmm(grouped, torch.bmm(rows.reshape(len(spans), -1, rows.shape[-1]), a), b).view(y.shape)
        # split, not slicing: the backward of a slice writes a full-size zero gradient per domain
        parts = [chunk @ self.lora_A[k].t() @ (self.lora_B[k].t() * self.scaling) for k, chunk in zip(domains, rows.split(sizes))]
        return y + (parts[0] if len(parts) == 1 else torch.cat(parts)).to(y.dtype)


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
    train: dict[str, Blocks],
    heldout: dict[str, Blocks],
    objective: str,
    tokenizer,
    cfg: PretrainConfig,
    device: torch.device,
    checkpoint_path: Path,
    on_done: Callable[[str, dict[str, tuple[torch.Tensor, torch.Tensor]], TrainResult, float | None], None],
    on_step: StepHook | None = None,
    logdir: Path | None = None,
) -> None:
    """Train the domains of ``initial`` (name -> layer -> (A, B)) together on ``model`` (the engine's fused loop).

    ``on_done(name, pairs, result, heldout_loss_after)`` is called as each domain finishes; ``logdir``: TensorBoard.
    """
    names = list(initial)
    segments, layers = install(model, initial, cfg.alpha / cfg.rank, cfg.dropout)

    def step_losses(active: list[int]) -> FusedStep:
        batches, spans, start = [], [], 0
        for k in active:
            own = results[names[k]].steps  # a domain's data order and masks follow its own step count
            blocks = train[names[k]][batch_rows(train[names[k]].shape[0], cfg.batch_size, cfg.seed, own)]
            generator = torch.Generator().manual_seed(step_seed(cfg.seed, own))
            batches.append(lm_batch(blocks, objective, tokenizer, generator, cfg.mlm_probability))
            spans.append((k, start, start + blocks.shape[0]))
            start += blocks.shape[0]
        segments.spans = spans
        # one pass over the fused batch, then each domain's mean over its own rows
        losses = lm_losses(model, torch.cat([b["input_ids"] for b in batches]).to(device), torch.cat([b["labels"] for b in batches]),
                           objective, spans=[(s, e) for _, s, e in spans])
        return FusedStep(losses, spans)

    def done(k: int, result: TrainResult) -> None:
        n = names[k]
        segments.only(k)
        after = evaluate(model, heldout[n], objective, tokenizer, cfg, device) if len(heldout[n]) else None
        pairs = {name: (layer.lora_A[k].detach().cpu().clone(), layer.lora_B[k].detach().cpu().clone()) for name, layer in layers.items()}
        on_done(n, pairs, result, after)

    try:
        params = {n: [p for layer in layers.values() for p in (layer.lora_A[k], layer.lora_B[k])] for k, n in enumerate(names)}
        steps = {n: total_steps(cfg, train[n].shape[0]) for n in names}
        results = {n: TrainResult() for n in names}
        train_domains(model, names, params, steps, results, cfg, step_losses, done, checkpoint_path, on_step, segments=segments,
                      logdir=logdir)
    finally:
        uninstall(model, layers)
