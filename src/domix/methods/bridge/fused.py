"""Fused domain pre-training: K domain LoRA modules trained at once over one frozen base.

Each step's batch stacks rows of every unfinished domain. Every targeted layer runs the
base weight once over the whole batch and each domain's LoRA pair over that domain's rows
only. Each domain keeps its own loss, optimizer, schedule, gradient clipping, data order
and masks, so its module is the one a separate run makes (tested to 1e-5 in float64; the
base model's own dropout, where it has any, draws its masks over the fused batch).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from domix.base_model import set_submodule
from domix.batches import lm_batch
from domix.lm_loss import lm_losses
from domix.tokens import Blocks
from domix.engine.fused import FusedStep, RowSegments, train_domains
from domix.engine.loop import StepHook, TrainResult, batch_rows, evaluate, step_seed, total_steps
from domix.methods.bridge.layer import add_product_, input_gradient

if TYPE_CHECKING:  # the settings' class only names a type here: methods/ sits below the recipes that import it
    from domix.pretraining.config import PretrainConfig


class _FusedLoRA(torch.autograd.Function):
    """y = x W^T + b + ((x' A_cat^T) * M) B_cat^T for a frozen W: every domain's LoRA pair in one layer.

    A_cat stacks the active domains' A (K·r rows), B_cat sets their (scaled) B side by side, and the
    mask M (rows x K·r) keeps each row's own domain's block, so a row gets only its domain's product,
    and each pair's gradient comes from its own rows. ``x'`` is x after LoRA dropout (None: x itself).

    Why by hand: K domains over one frozen base is not a PEFT layer. Written as one function, the
    layer is a few large matrix products (the cross-domain ones are computed and masked: r-wide, they
    cost less than K small products and their concatenation did), the LoRA product is added into the
    base output in place, and in backward the input gradient takes both paths in one addmm, not as
    two full-size gradients summed by autograd.
    """

    @staticmethod
    def forward(ctx, x, x_drop, weight, bias, a_cat, b_cat, mask):
        lora_in = (x if x_drop is None else x_drop).to(a_cat.dtype)
        y = nn.functional.linear(x, weight, bias)
        h = (lora_in @ a_cat.t()) * mask
        add_product_(y, h, b_cat.t())
        ctx.save_for_backward(lora_in, h, weight, a_cat, b_cat, mask)
        ctx.dropped = x_drop is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        lora_in, h, weight, a_cat, b_cat, mask = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1])
        g_lora = g.to(b_cat.dtype)
        grad_h = ((g_lora @ b_cat).view(h.shape) * mask).view(-1, h.shape[-1])
        grad_b = g_lora.t() @ h.reshape(-1, h.shape[-1])
        grad_a = grad_h.t() @ lora_in.reshape(-1, lora_in.shape[-1])
        through_lora = grad_h @ a_cat
        if ctx.dropped:  # the LoRA part goes back through the dropout
            return ((g @ weight).view(*grad_y.shape[:-1], -1), through_lora.view(*grad_y.shape[:-1], -1).to(lora_in.dtype),
                    None, None, grad_a, grad_b, None)
        grad_x = input_gradient(g, weight, through_lora)  # both paths' input gradients in one pass
        return grad_x.view(*grad_y.shape[:-1], -1), None, None, None, grad_a, grad_b, None


class FusedLoRALinear(nn.Module):
    """A frozen linear layer with one LoRA pair per domain, each applied to its own rows."""

    def __init__(self, base: nn.Linear, pairs: list[tuple[torch.Tensor, torch.Tensor]], scaling: float,
                 dropout: float, segments: RowSegments):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ParameterList([nn.Parameter(a.detach().clone()) for a, _ in pairs])
        self.lora_B = nn.ParameterList([nn.Parameter(b.detach().clone()) for _, b in pairs])
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.segments = segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spans = self.segments.spans
        if not spans:
            return self.base_layer(x)
        if torch.is_grad_enabled() and self.base_layer.weight.requires_grad:
            raise RuntimeError("fused LoRA layers train over a frozen base; freeze the base layer's weight")
        domains = [k for k, _, _ in spans]
        a_cat = torch.cat([self.lora_A[k] for k in domains])
        b_cat = torch.cat([self.lora_B[k] for k in domains], dim=1) * self.scaling  # scaled while small
        mask = self.segments.column_mask(self.lora_A[domains[0]].shape[0], x, a_cat.dtype)
        x_drop = self.dropout(x) if self.dropout is not None and self.training else None
        return _FusedLoRA.apply(x, x_drop, self.base_layer.weight, self.base_layer.bias, a_cat, b_cat, mask)


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
    segments, layers = install(model, initial, cfg.alpha / cfg.lora_rank, cfg.dropout)

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
