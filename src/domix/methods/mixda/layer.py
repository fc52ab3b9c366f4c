"""MixDA's layers, all wrapped around a block's FFN output projection W2 (Llama ``mlp.down_proj``,
BERT ``output.dense``): its input is the FFN's intermediate activation h, its output W2 h.

- :class:`BottleneckAdapter`: Up(GELU(Down(x))), Up zero-initialised, so it starts as the zero map.
- :class:`DomainAdapterLinear` (stage 1): W2 h + DA_k(h) on the rows of domain k, every domain's
  adapter over its own rows of a fused batch; optionally records the retention term
  MSE(W2 h + DA_k(h), W2 h) of those rows.
- :class:`MixtureOfAdapters` (stage 2): m = Σ_k g_k DA_k(h) + g_{N+1} W2 h with g = softmax(gate(pooled h))
  per example, then the task adapter on top, m + TA(m) (stacked after the mixture, as the paper does).

The adapters run in float32 (float64 on a float64 base) whatever the base's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domix.errors import DomixError
from domix.methods.domix.fused import RowSegments


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if base_dtype == torch.float64 else torch.float32


class BottleneckAdapter(nn.Module):
    """Up(GELU(Down(x))): d_in -> width -> d_out, Up zero-initialised."""

    def __init__(self, d_in: int, d_out: int, width: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.down = nn.Linear(d_in, width, dtype=dtype)
        self.up = nn.Linear(width, d_out, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class Segments(RowSegments):
    """Which rows belong to which domain, and (while set) where each domain's retention terms go."""

    def __init__(self) -> None:
        super().__init__()
        self.retention: dict[int, list[torch.Tensor]] | None = None

    def state(self):
        # a recomputation computes the retention terms again (the same saved tensors), into lists no one reads
        return list(self.spans), self.retention is not None

    def set_state(self, state) -> None:
        spans, retention = state
        self.spans = spans
        if retention != (self.retention is not None):
            self.retention = {k: [] for k, _, _ in spans} if retention else None


class DomainAdapterLinear(nn.Module):
    """Stage 1: a frozen W2 with one domain adapter per domain, each applied to its own rows."""

    def __init__(self, base: nn.Linear, adapters: list[BottleneckAdapter], segments: Segments):
        super().__init__()
        self.base_layer = base
        self.adapters = nn.ModuleList(adapters)
        self.segments = segments

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        plain = self.base_layer(h)
        spans = self.segments.spans
        if not spans:
            return plain
        dtype = self.adapters[0].up.weight.dtype
        sizes = [(end if end is not None else h.shape[0]) - start for _, start, end in spans]
        # split, not slicing: the backward of a slice writes a full-size zero gradient per domain
        mixed = [p.to(dtype) + self.adapters[k](rows.to(dtype))
                 for (k, _, _), rows, p in zip(spans, h.split(sizes), plain.split(sizes))]
        if self.segments.retention is not None:
            for (k, _, _), p, m in zip(spans, plain.split(sizes), mixed):
                # the mixture output against the plain FFN output: two different tensors
                self.segments.retention[k].append(F.mse_loss(m, p.to(dtype)))
        return (mixed[0] if len(mixed) == 1 else torch.cat(mixed)).to(plain.dtype)


class MaskContext:
    """The attention mask of the backbone's current call, captured by a forward pre-hook on it."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:  # forward(input_ids, attention_mask, ...)
            mask = args[1]
        self.mask = mask

    def real_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, 1) weights: 1 for real tokens, 0 for padding (all 1 without a mask)."""
        if self.mask is None:
            return torch.ones(h.shape[:2] + (1,), dtype=h.dtype, device=h.device)
        if self.mask.dim() != 2 or tuple(self.mask.shape) != tuple(h.shape[:2]):
            raise DomixError(f"MixDA's gate pools over the attention mask, but the backbone got a mask of shape "
                             f"{tuple(self.mask.shape)} for {tuple(h.shape[:2])} tokens; pass a (batch, tokens) attention_mask")
        return self.mask.to(device=h.device, dtype=h.dtype)[..., None]


class MixtureOfAdapters(nn.Module):
    """Stage 2: frozen W2 and domain adapters, a trainable gate over them and a trainable task adapter."""

    def __init__(self, base: nn.Linear, adapters: list[BottleneckAdapter], context: MaskContext,
                 gate_width: int, task_width: int, dtype: torch.dtype):
        super().__init__()
        d_ff, d_model = base.in_features, base.out_features
        self.base_layer = base
        self.adapters = nn.ModuleList(adapters).requires_grad_(False)
        self.gate = nn.Sequential(nn.Linear(d_ff, gate_width, dtype=dtype), nn.GELU(),
                                  nn.Linear(gate_width, len(adapters) + 1, dtype=dtype))
        self.task_adapter = BottleneckAdapter(d_model, d_model, task_width, dtype)
        self.context = context
        self.log: list[torch.Tensor] | None = None  # gate weights of each call, while recording

    def gate_weights(self, h: torch.Tensor) -> torch.Tensor:
        """(batch, N+1) softmax weights from the mean of h over each example's real tokens."""
        real = self.context.real_tokens(h)
        pooled = (h * real).sum(1) / real.sum(1).clamp_min(1)
        return torch.softmax(self.gate(pooled), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        plain = self.base_layer(h)
        x = h.to(self.task_adapter.up.weight.dtype)
        g = self.gate_weights(x)
        mixed = g[:, None, None, -1] * plain.to(x.dtype)
        for k, adapter in enumerate(self.adapters):
            mixed = mixed + g[:, None, None, k] * adapter(x)
        if self.log is not None:
            self.log.append(g.detach().cpu())
        return (mixed + self.task_adapter(mixed)).to(plain.dtype)
