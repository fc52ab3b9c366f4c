"""The bridged linear layer: y = W x + b + B_cat diag(s) P A_cat x.

A_cat (frozen) stacks the domain modules' A matrices, B_cat (trainable) sets their B
matrices side by side, P (trainable, Σr × Σr) is the bridge, and s holds each domain's
LoRA scale (alpha / r) per column, so modules of different ranks and alphas compose.

The layer runs in a custom autograd function that saves only u = A_cat x (Σr numbers
per token) for the backward pass, never the layer input x (d_in numbers per token): with
W and A frozen, every gradient can be computed from u, P, B_cat, s and W. This is where DoMIX's
memory advantage over plain LoRA comes from.
"""

from __future__ import annotations

import torch
from torch import nn


def add_product_(y: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """y += left @ right in place, y viewed as rows (one pass over y when the dtypes agree); returns y."""
    flat = y.view(-1, y.shape[-1])
    if left.dtype == y.dtype:
        flat.addmm_(left.reshape(-1, left.shape[-1]), right)
    else:  # a low-rank path kept in another dtype than the base (fp32 over bf16)
        flat.add_((left.reshape(-1, left.shape[-1]) @ right).to(y.dtype))
    return y


def input_gradient(grad: torch.Tensor, weight: torch.Tensor, through: torch.Tensor) -> torch.Tensor:
    """grad @ W + ``through`` (the low-rank path's input gradient), both in one pass when the dtypes agree."""
    return through.addmm_(grad, weight) if through.dtype == grad.dtype else (grad @ weight).add_(through.to(grad.dtype))


class _BridgePath(torch.autograd.Function):
    """y = W x + b + B diag(s) P A x for a frozen W and A: the base product and the bridged path in one.

    One function, so that the path's product is added into the base output in place, and in
    backward both input gradients come out of one addmm instead of two full-size tensors that
    autograd then sums. It keeps u = A x for backward and nothing of the input's width.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, P, B, s):
        y = nn.functional.linear(x, weight, bias)
        u = x.to(A.dtype) @ A.t()  # (..., R)
        add_product_(y, (u @ P.t()) * s, B.t())
        ctx.save_for_backward(u, weight, A, P, B, s)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        u, weight, A, P, B, s = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        g_path = g.to(B.dtype)
        u2 = u.reshape(-1, u.shape[-1])
        h = u2 @ P.t()  # recomputed: cheaper than keeping it
        grad_hs = g_path @ B  # d(loss)/d(h·s)
        grad_h = grad_hs * s
        grad_B = g_path.t() @ (h * s) if ctx.needs_input_grad[5] else None
        grad_P = grad_h.t() @ u2 if ctx.needs_input_grad[4] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = input_gradient(g, weight, (grad_h @ P) @ A).reshape(*grad_out.shape[:-1], A.shape[1])
        return grad_x, None, None, None, grad_P, grad_B, None


class BridgedLinear(nn.Module):
    """A frozen linear layer plus the bridged path of N domain modules."""

    def __init__(
        self, base: nn.Linear, A: torch.Tensor, B: torch.Tensor, scales: torch.Tensor, p_scale: float,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        rank = A.shape[0]
        if A.shape[1] != base.in_features or B.shape != (base.out_features, rank) or scales.shape != (rank,):
            raise ValueError(f"bridge shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not fit a layer {base.in_features}->{base.out_features}")
        self.base_layer = base
        self.register_buffer("lora_A", A.detach().to(dtype).clone())
        self.register_buffer("scales", scales.detach().to(dtype).clone())
        self.lora_B = nn.Parameter(B.detach().to(dtype).clone())
        self.bridge = nn.Parameter(torch.eye(rank, dtype=dtype) * p_scale)
        self.register_buffer("p_mask", None)  # keep_blocks: P's entries that act (None: all of them)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def keep_blocks(self, ranks: list[int]) -> None:
        """Make P block-diagonal over modules of these ranks (in A_cat's order): a module's columns then feed only its
        own B block, so no module's subspace writes through another's (the cross-module blocks stay zero, untrained)."""
        if sum(ranks) != self.rank:
            raise ValueError(f"blocks of ranks {ranks} do not add up to the bridge's rank {self.rank}")
        mask = torch.block_diag(*(torch.ones(r, r) for r in ranks)).to(self.bridge)
        self.p_mask = mask
        with torch.no_grad():
            self.bridge.mul_(mask)

    @property
    def P(self) -> torch.Tensor:
        """The bridge as it acts: the trained matrix, its cross-module blocks masked out where keep_blocks said so."""
        return self.bridge if self.p_mask is None else self.bridge * self.p_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.base_layer.weight.requires_grad:
            # a trainable base weight (a task model loaded to train further): plain autograd, which keeps x
            path = ((x.to(self.lora_A.dtype) @ self.lora_A.t() @ self.P.t()) * self.scales) @ self.lora_B.t()
            return self.base_layer(x) + path.to(x.dtype)
        args = (x, self.base_layer.weight, self.base_layer.bias, self.lora_A, self.P, self.lora_B, self.scales)
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # Under autocast (--autocast) every product of the layer runs in the autocast dtype, as torch.amp.custom_fwd's
            # cast_inputs does; the casts sit outside the function, so the gradients reach the float32 weights through them
            low = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return _BridgePath.apply(*(t.to(low) if t is not None and t.is_floating_point() else t for t in args))
        return _BridgePath.apply(*args)

    def delta_weight(self) -> torch.Tensor:
        """The layer's whole update, B_cat diag(s) P A_cat, shaped like W."""
        return (self.lora_B * self.scales) @ self.P @ self.lora_A

    def extra_repr(self) -> str:
        return f"rank={self.rank}"
