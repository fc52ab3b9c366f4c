"""The language-model loss without the full logits: the output projection and cross-entropy in chunks.

A batch of 12 x 128 tokens over a 49,152-token vocabulary holds 300 MB of fp32 logits, and as much
again for their gradient, the largest activation of a LoRA step on a small model. Here the model runs
with its output projection swapped for a pass-through (:func:`hidden_states`), so it returns the
last hidden states; only the tokens that have a target are projected, a chunk at a time, and each
chunk's gradient is computed in the forward pass while its logits are at hand (as Liger-Kernel's
fused linear cross-entropy does). Peak memory holds one chunk's logits, and the step does the
projection's matrix products once each, as the plain computation does.

Why not a library: Liger-Kernel and cut-cross-entropy are Triton kernels (GPU only), torchtune's
chunked loss still takes the full logits from the model; this is one short autograd function that
runs on every device. Tested against ``F.cross_entropy`` on full logits and against the loss
transformers computes, to 1e-6 in float64.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from domix.base_model import set_submodule
from domix.batches import IGNORE_INDEX

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in fp32)
# config fields of models that transform the logits after the projection (soft-capping, scaling):
# the loss is then computed from the model's own logits
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-segment sums of ``scale[i] * CE(hidden[i] @ weight.T + bias, targets[i])``, chunk by chunk.

    Forward computes each chunk's logits once and, when gradients are wanted, the gradient of the
    scaled losses with respect to the hidden states, weight and bias (softmax minus one-hot, times
    the scale). Backward multiplies them by each segment's incoming gradient. A weight or bias
    gradient is kept whole, so they require a single segment (``lm_losses`` calls once per segment then).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, segment, n_segments: int, chunk: int):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if (need_w or need_b) and n_segments > 1:
            raise ValueError("a trainable output projection needs one segment per call")
        compute = torch.promote_types(hidden.dtype, torch.float32)  # bf16/fp16 logits go to fp32, as transformers does
        losses = torch.zeros(n_segments, dtype=compute, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=compute, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=compute, device=bias.device) if need_b else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            s = scale[start : start + chunk].to(compute)
            logits = F.linear(h, weight, bias).to(compute)
            lse = torch.logsumexp(logits, dim=-1)
            token_loss = lse - logits.gather(1, t[:, None]).squeeze(1)
            losses.index_add_(0, segment[start : start + chunk], token_loss * s)
            if not (need_h or need_w or need_b):
                continue
            g = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
            g[torch.arange(len(t), device=g.device), t] -= 1
            g.mul_(s[:, None])
            if need_h:
                grad_h[start : start + chunk] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.add_(g.t() @ h.to(compute))
            if need_b:
                grad_b.add_(g.sum(0))
        ctx.save_for_backward(grad_h, grad_w, grad_b, segment)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        grad_h, grad_w, grad_b, segment = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_losses[segment][:, None].to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w * grad_losses[0]).to(ctx.dtypes[0])
        if grad_b is not None:
            grad_b = (grad_b * grad_losses[0]).to(ctx.dtypes[1])
        return grad_h, grad_w, grad_b, None, None, None, None, None


class _PassThrough(nn.Module):
    """Stands in for the output projection: the model then returns its last hidden states as ``logits``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextmanager
def hidden_states(model: nn.Module) -> Iterator[nn.Linear | None]:
    """Run ``model`` (a transformers LM, PEFT-wrapped or not) returning hidden states in place of logits.

    Yields the output projection (an ``nn.Linear``), or None where this cannot be done: a projection
    that is not a plain linear layer (one adapted by LoRA), or a model that transforms its logits
    after the projection. The model is restored on exit.
    """
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    config = getattr(model, "config", None)
    if type(head) is not nn.Linear or any(getattr(config, k, None) not in (None, 0, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        yield None
        return
    name = next(n for n, m in model.named_modules() if m is head)
    set_submodule(model, name, _PassThrough())
    try:
        yield head
    finally:
        set_submodule(model, name, head)


def shifted_targets(labels: torch.Tensor, objective: str) -> torch.Tensor:
    """What each position predicts: its own label (masked LM), or the next token's (causal LM)."""
    if objective != "clm":
        return labels
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def predicted_tokens(labels: torch.Tensor, objective: str) -> int:
    """How many tokens of ``labels`` the loss predicts (a causal LM never predicts the first)."""
    return int((shifted_targets(labels, objective) != IGNORE_INDEX).sum())


def lm_losses(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, objective: str,
              spans: list[tuple[int, int]] | None = None, denominators: list[float] | None = None,
              attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Run ``model`` on ``input_ids``; for each span of rows (start, end) its summed token loss over its
    denominator: by default its predicted tokens (the mean transformers computes for those rows).

    ``spans`` default to the whole batch. Labels are IGNORE_INDEX where nothing is predicted; a causal
    LM's labels are shifted here, as transformers does. Chunked, so that the logits are never whole.
    """
    spans = spans if spans is not None else [(0, input_ids.shape[0])]
    targets = shifted_targets(labels, objective).to(input_ids.device)
    if denominators is None:
        denominators = [max(int((targets[s:e] != IGNORE_INDEX).sum()), 1) for s, e in spans]
    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
    with hidden_states(model) as head:
        out = model(input_ids=input_ids, **kwargs).logits
    if head is None:  # the model's own logits, whole
        return [F.cross_entropy(out[s:e].flatten(0, 1).to(torch.promote_types(out.dtype, torch.float32)), targets[s:e].flatten(),
                                ignore_index=IGNORE_INDEX, reduction="sum") / d for (s, e), d in zip(spans, denominators)]
    segment_of_row = torch.full((input_ids.shape[0],), -1, dtype=torch.long, device=input_ids.device)
    scale_of_row = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=input_ids.device)
    for k, ((s, e), d) in enumerate(zip(spans, denominators)):
        segment_of_row[s:e], scale_of_row[s:e] = k, 1.0 / d
    kept = (targets != IGNORE_INDEX) & (segment_of_row[:, None] >= 0)
    rows = kept.nonzero()[:, 0]
    hidden, targets = out[kept], targets[kept]  # only the tokens that are predicted are projected
    segment, scale = segment_of_row[rows], scale_of_row[rows]
    chunk = max(128, CHUNK_ELEMENTS // head.out_features)
    weight, bias = head.weight, head.bias
    if not torch.is_grad_enabled():  # an evaluation: no gradient for a trainable projection either
        weight, bias = weight.detach(), bias.detach() if bias is not None else None
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        # a trainable projection: its gradient is kept whole, so one call per span
        return [_LinearCrossEntropy.apply(hidden[segment == k], weight, bias, targets[segment == k], scale[segment == k],
                                          torch.zeros(int((segment == k).sum()), dtype=torch.long, device=hidden.device), 1, chunk)[0]
                for k in range(len(spans))]
    return list(_LinearCrossEntropy.apply(hidden, weight, bias, targets, scale, segment, len(spans), chunk).unbind())
