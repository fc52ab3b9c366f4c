"""The fused LoRA layer against PEFT's: each domain's rows get what PEFT's LoRA layer with that domain's
pair computes, and each pair the gradient PEFT's gives it (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from domix.methods.bridge.fused import install


def _peft_layer(base: nn.Linear, a: torch.Tensor, b: torch.Tensor):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(nn.Sequential(base), LoraConfig(r=a.shape[0], lora_alpha=2 * a.shape[0], target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    return model, layer


@pytest.mark.parametrize("sizes", [(3, 3, 3), (4, 1, 2), (5,)], ids=["equal", "unequal", "one"])
def test_each_domains_rows_get_what_peft_lora_gives_them(sizes):
    g = torch.Generator().manual_seed(0)
    d_in, d_out, r, length = 7, 5, 2, 6
    base = nn.Linear(d_in, d_out).double().requires_grad_(False)  # a frozen base, as fused training has
    pairs = [(torch.randn(r, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, r, generator=g, dtype=torch.float64))
             for _ in sizes]
    x = torch.randn(sum(sizes), length, d_in, generator=g, dtype=torch.float64)
    upstream = torch.randn(sum(sizes), length, d_out, generator=g, dtype=torch.float64)

    model = nn.Sequential(base)
    segments, layers = install(model, {f"d{k}": {"0": pair} for k, pair in enumerate(pairs)}, scaling=2.0, dropout=0.0)
    starts = torch.tensor((0, *sizes)).cumsum(0).tolist()
    segments.spans = [(k, starts[k], starts[k + 1]) for k in range(len(sizes))]
    out = model(x)
    (out * upstream).sum().backward()
    fused = layers["0"]

    for k, (a, b) in enumerate(pairs):
        rows = slice(starts[k], starts[k + 1])
        peft_model, layer = _peft_layer(nn.Linear(d_in, d_out).double(), a, b)
        layer.base_layer.load_state_dict(base.state_dict())
        want = peft_model(x[rows])
        (want * upstream[rows]).sum().backward()
        torch.testing.assert_close(out[rows], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fused.lora_A[k].grad, layer.lora_A["default"].weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fused.lora_B[k].grad, layer.lora_B["default"].weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dropped", [False, True], ids=["no-dropout", "dropout-input"])
def test_the_fused_products_gradients_match_finite_differences(dropped):
    from domix.methods.bridge.fused import _FusedLoRA

    g = torch.Generator().manual_seed(1)
    rows, length, d_in, d_out, r = 5, 3, 4, 6, 2
    x = torch.randn(rows, length, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    x_drop = torch.randn(rows, length, d_in, generator=g, dtype=torch.float64, requires_grad=True) if dropped else None
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    bias = torch.randn(d_out, generator=g, dtype=torch.float64)
    a_cat = torch.randn(2 * r, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    b_cat = torch.randn(d_out, 2 * r, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(rows, 1, 2 * r, dtype=torch.float64)
    mask[:3, :, :r], mask[3:, :, r:] = 1, 1  # rows 0-2 are domain 0's, rows 3-4 domain 1's
    inputs = (x, x_drop, weight, bias, a_cat, b_cat, mask)
    assert torch.autograd.gradcheck(_FusedLoRA.apply, inputs)
