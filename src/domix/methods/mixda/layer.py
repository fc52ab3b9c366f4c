"""MixDA's layers, all wrapped around a block's FFN output projection W2 (Llama ``mlp.down_proj``,
BERT ``output.dense``): its input is the FFN's intermediate activation h, its output W2 h.

- :class:`BottleneckAdapter`: Up(GELU(Down(x))), Up zero-initialised, so it starts as the zero map.
- :class:`Gate`: Linear, GELU, Linear over the pooled h, then a softmax (the published gate is a deeper
  MLP over the last position, which is padding for short inputs; this one pools what a position may see).
- :class:`DomainAdapterLinear` (stage 1): g_1 DA_k(h) + g_2 W2 h with domain k's two-way gate g, on the
  rows of domain k, every domain over its own rows of a fused batch (the published stage 1 trains
  through this gate too); optionally records the retention term MSE(that, W2 h) of those rows.
- :class:`MixtureOfAdapters` (stage 2): m = Σ_k g_k DA_k(h) + g_{N+1} W2 h with an (N+1)-way gate, which
  starts as the stage-1 gates side by side (:func:`combine_gates`: each domain keeps its stage-1 odds
  against W2 h, so with one domain stage 2 starts as that domain's stage-1 model), then the task
  adapter on top, m + TA(m) (stacked after the mixture, as the paper does).

Pooling: an encoder's gate reads the mean of h over the example's real tokens; a decoder's gate at each
position reads the mean over the real tokens up to it, so no position sees the future (a causal LM
trains on that) and the last token, which a sequence classifier reads, sees the whole example.

The adapters run in float32 (float64 on a float64 base) whatever the base's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from domix.errors import DomixError
from domix.methods.bridge.fused import RowSegments


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


class MaskContext:
    """The attention mask of the backbone's current call, captured by a forward pre-hook on it, and the
    pooling the gates read (``causal``: a decoder's running mean)."""

    def __init__(self, causal: bool) -> None:
        self.mask: torch.Tensor | None = None
        self.causal = causal
        self.handle = None  # the hook's handle, to take it off again

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

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        """What each position's gate reads: (batch, 1, d) for an encoder, (batch, tokens, d) for a decoder."""
        real = self.real_tokens(h)
        if self.causal:
            return (h * real).cumsum(1) / real.cumsum(1).clamp_min(1)
        return (h * real).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp_min(1)


class Gate(nn.Module):
    """softmax(Linear(GELU(Linear(x)))) over ``outputs`` branches; ``zero_output`` starts it even."""

    def __init__(self, d_in: int, width: int, outputs: int, dtype: torch.dtype, zero_output: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width, dtype=dtype), nn.GELU(), nn.Linear(width, outputs, dtype=dtype))
        if zero_output:
            nn.init.zeros_(self.net[2].weight)
            nn.init.zeros_(self.net[2].bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(pooled), dim=-1)


@torch.no_grad()
def combine_gates(gates: list[Gate]) -> Gate:
    """Stage 2's (N+1)-way gate from N stage-1 two-way gates: their hidden layers side by side, and output k
    the log-odds of stage-1 gate k for its adapter against W2 h (output N+1 at zero). Then g_k / g_{N+1}
    is exactly stage-1 gate k's g_1 / g_2 for every input, and with N = 1 the gate equals the stage-1 one."""
    first = gates[0].net[0]
    width = first.out_features
    out = Gate(first.in_features, width * len(gates), len(gates) + 1, first.weight.dtype).to(first.weight.device)
    hidden, logits = out.net[0], out.net[2]
    logits.weight.zero_()
    logits.bias.zero_()
    for k, gate in enumerate(gates):
        rows = slice(k * width, (k + 1) * width)
        hidden.weight[rows] = gate.net[0].weight
        hidden.bias[rows] = gate.net[0].bias
        logits.weight[k, rows] = gate.net[2].weight[0] - gate.net[2].weight[1]
        logits.bias[k] = gate.net[2].bias[0] - gate.net[2].bias[1]
    return out


class DomainAdapterLinear(nn.Module):
    """Stage 1: a frozen W2 with one domain adapter and two-way gate per domain, each over its own rows."""

    def __init__(self, base: nn.Linear, adapters: list[BottleneckAdapter], gates: list[Gate], segments: Segments,
                 context: MaskContext):
        super().__init__()
        self.base_layer = base
        self.adapters = nn.ModuleList(adapters)
        self.gates = nn.ModuleList(gates)
        self.segments = segments
        self.context = context

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        plain = self.base_layer(h)
        spans = self.segments.spans
        if not spans:
            return plain
        dtype = self.adapters[0].up.weight.dtype
        x = h.to(dtype)
        pooled = self.context.pooled(x)
        sizes = [(end if end is not None else h.shape[0]) - start for _, start, end in spans]
        # split, not slicing: the backward of a slice writes a full-size zero gradient per domain
        mixed = []
        for (k, _, _), rows, pool, p in zip(spans, x.split(sizes), pooled.split(sizes), plain.split(sizes)):
            g = self.gates[k](pool)
            mixed.append(g[..., :1] * self.adapters[k](rows) + g[..., 1:] * p.to(dtype))
        if self.segments.retention is not None:
            for (k, _, _), p, m in zip(spans, plain.split(sizes), mixed):
                # the mixture output against the plain FFN output: two different tensors
                self.segments.retention[k].append(F.mse_loss(m, p.to(dtype)))
        return (mixed[0] if len(mixed) == 1 else torch.cat(mixed)).to(plain.dtype)


class MixtureOfAdapters(nn.Module):
    """Stage 2: frozen W2 and domain adapters, a trainable gate over them and a trainable task adapter."""

    def __init__(self, base: nn.Linear, adapters: list[BottleneckAdapter], context: MaskContext, gate: Gate,
                 task_width: int, dtype: torch.dtype):
        super().__init__()
        d_model = base.out_features
        self.base_layer = base
        self.adapters = nn.ModuleList(adapters).requires_grad_(False)
        self.gate = gate
        self.task_adapter = BottleneckAdapter(d_model, d_model, task_width, dtype)
        self.context = context
        self.log: list[torch.Tensor] | None = None  # gate weights of each example, while recording

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        plain = self.base_layer(h)
        x = h.to(self.task_adapter.up.weight.dtype)
        g = self.gate(self.context.pooled(x))  # (batch, 1 or tokens, N+1)
        mixed = g[..., -1:] * plain.to(x.dtype)
        for k, adapter in enumerate(self.adapters):
            mixed = mixed + g[..., k : k + 1] * adapter(x)
        if self.log is not None:
            self.log.append(self._per_example(g).detach().cpu())
        return (mixed + self.task_adapter(mixed)).to(plain.dtype)

    def _per_example(self, g: torch.Tensor) -> torch.Tensor:
        """An example's gate weights: its own (encoder), or the mean over its real tokens (decoder)."""
        if g.shape[1] == 1:
            return g[:, 0]
        real = self.context.real_tokens(g)
        return (g * real).sum(1) / real.sum(1).clamp_min(1)
