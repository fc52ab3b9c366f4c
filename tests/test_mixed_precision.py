"""The fine-tuning speed settings: bfloat16 autocast (the bridge's own autograd function included) and
length-grouped batches, against references computed by hand or by torch in float32."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from domix.engine.loop import batch_rows, grouped_batch_rows
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.finetuning.run import finetune
from domix.methods.bridge.layer import BridgedLinear


def test_the_bridged_layer_under_bf16_autocast_matches_the_formula_in_float32():
    torch.manual_seed(0)
    base = nn.Linear(48, 40)
    base.requires_grad_(False)
    A, B, s = torch.randn(6, 48) / 7, torch.randn(40, 6) / 3, torch.tensor([2.0] * 3 + [0.5] * 3)
    layer = BridgedLinear(base, A, B, s, p_scale=1 / 6)
    with torch.no_grad():
        layer.bridge.add_(torch.randn(6, 6) / 20)
    x = torch.randn(3, 5, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16  # as an autocast nn.Linear gives
    target = torch.randn(3, 5, 40)
    ((y.float() - target) ** 2).sum().backward()

    # the paper's formula by hand, in float32, with plain autograd
    P, Bw, xr = layer.bridge.detach().clone().requires_grad_(), layer.lora_B.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ref = xr @ base.weight.t() + base.bias + ((xr @ A.t() @ P.t()) * s) @ Bw.t()
    ((ref - target) ** 2).sum().backward()
    assert torch.allclose(y.float(), ref, rtol=0.02, atol=0.02)
    for ours, theirs in ((layer.bridge.grad, P.grad), (layer.lora_B.grad, Bw.grad), (x.grad, xr.grad)):
        assert ours.dtype == torch.float32  # the gradient reaches the float32 weight through the cast
        assert (ours - theirs).norm() / theirs.norm() < 0.02


def test_length_grouped_batches_cover_each_epoch_once_with_far_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (333,), generator=g).tolist()
    per_epoch = -(-333 // 16)
    for epoch in range(2):
        grouped = [grouped_batch_rows(lengths, 16, 7, epoch * per_epoch + i).tolist() for i in range(per_epoch)]
        assert sorted(sum(grouped, [])) == list(range(333))  # every example once an epoch
        assert sorted(len(b) for b in grouped) == sorted(len(batch_rows(333, 16, 7, i)) for i in range(per_epoch))
        plain = [batch_rows(333, 16, 7, epoch * per_epoch + i).tolist() for i in range(per_epoch)]

        def padded(batches):
            return sum(len(b) * max(lengths[j] for j in b) for b in batches)

        assert padded(grouped) < 0.75 * padded(plain)
        widths = [max(lengths[j] for j in b) for b in grouped]
        assert widths != sorted(widths) and widths != sorted(widths, reverse=True)  # the batches' order is shuffled
    first = [grouped_batch_rows(lengths, 16, 7, i).tolist() for i in range(per_epoch)]
    assert first == [grouped_batch_rows(lengths, 16, 7, i).tolist() for i in range(per_epoch)]  # a pure function of (seed, step)
    assert first != [grouped_batch_rows(lengths, 16, 7, per_epoch + i).tolist() for i in range(per_epoch)]  # a fresh draw each epoch
    assert first != [grouped_batch_rows(lengths, 16, 8, i).tolist() for i in range(per_epoch)]


@pytest.mark.parametrize("method", ["domix", "lora"])
def test_a_run_with_autocast_and_grouped_batches_trains_and_records_its_time(tmp_path, tiny_llama, llama_store, task, method):
    where = {"modules": str(llama_store)} if method == "domix" else {"model": str(tiny_llama)}
    runs = {}
    for name, extra in (("plain", {}), ("fast", {"autocast": "bfloat16", "group_by_length": True})):
        cfg = FinetuneConfig(task=str(task), out=str(tmp_path / name), method=method, epochs=2, lr=5e-3, max_length=32, seed=1,
                             save_model=False, **where, **extra)
        runs[name] = finetune(cfg)
    fast = runs["fast"]
    assert fast["loss_curve"][-1][1] < fast["loss_curve"][0][1]
    assert set(fast["time_s"]) == {"setup", "train", "dev", "test", "retention"} and fast["time_s"]["train"] > 0
    assert json.loads((tmp_path / "fast" / "run.json").read_text())["config"]["autocast"] == "bfloat16"
    # the same head init: the first step's loss is of the same size in both (their first batches differ)
    assert abs(fast["loss_curve"][0][1] - runs["plain"]["loss_curve"][0][1]) < 0.5


def test_autocast_takes_bf16_or_fp16_only(tmp_path, tiny_llama, task):
    with pytest.raises(DomixError, match="--autocast must be bfloat16 or float16"):
        FinetuneConfig(task=str(task), out=str(tmp_path / "x"), method="lora", model=str(tiny_llama), autocast="int8").validate()


def test_the_speed_benchmark_runs_each_variant_side_by_side(tmp_path, tiny_llama, task, capsys):
    spec = importlib.util.spec_from_file_location("finetune_speed", Path(__file__).parents[1] / "benchmarks" / "finetune_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--task", str(task), "--method", "lora", "--model", str(tiny_llama), "--seeds", "1", "--variants", "fp32",
                      "bf16+grouped", "--set", "epochs=1", "max_length=32", "lr=5e-3", "--json", str(tmp_path / "speed.json")])
    assert [r["variant"] for r in out["runs"]] == ["fp32", "bf16+grouped"]
    assert out["variants"]["fp32"]["speedup"] == 1.0 and out["settings"]["score_test"] is False
    assert json.loads((tmp_path / "speed.json").read_text())["runs"][1]["dev_macro_f1"] == out["runs"][1]["dev_macro_f1"]
    assert "median wall s" in capsys.readouterr().out
