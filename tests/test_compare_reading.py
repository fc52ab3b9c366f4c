"""benchmarks/compare_reading.py: the bridge shares and their starting values, computed again by hand."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compare_reading import _starting_shares, bridge_shares, differences, on_inputs, own_domain_lift, run_shares  # noqa: E402


def test_run_shares_average_each_layers_shares():
    usage = {"domains": ["a", "b"], "norms": [[3.0, 1.0], [1.0, 1.0]]}
    assert run_shares(usage) == pytest.approx({"a": (0.75 + 0.5) / 2, "b": (0.25 + 0.5) / 2})


def test_own_domain_lift_is_the_share_on_its_task_against_the_other_tasks():
    rows = [{"row": "domix", "task": "t1", "own": "a", "shares": {"a": 0.6, "b": 0.4}},
            {"row": "domix", "task": "t2", "own": "b", "shares": {"a": 0.5, "b": 0.5}},
            {"row": "domix", "task": "t3", "own": "a", "shares": {"a": 0.4, "b": 0.6}}]
    lifts = own_domain_lift(rows)
    assert lifts[("domix", "t1")] == pytest.approx(0.6 - (0.5 + 0.4) / 2)
    assert lifts[("domix", "t2")] == pytest.approx(0.5 - (0.4 + 0.6) / 2)


def test_differences_pair_the_runs_of_each_seed():
    def run(row, task, name, f1):
        return {"row": row, "task": task, "run": name, "test": {"macro_f1": f1, "accuracy": f1}}

    records = [run("domix", "t1", "seed1", 0.50), run("domix", "t2", "seed1", 0.30),
               run("domix", "t1", "seed2-x-y", 0.40), run("domix", "t1", "seed2-y-x", 0.44),  # two orders of seed 2: their mean
               run("domix", "t2", "seed2", 0.36),
               run("lora_fa", "t1", "seed1", 0.45), run("lora_fa", "t2", "seed1", 0.31), run("lora_fa", "t1", "seed2", 0.40),
               run("lora_fa", "t2", "seed2", 0.30), run("lora_fa", "t1", "seed3", 0.9)]  # seed 3: lora_fa only, left out
    row = next(r for r in differences(records) if (r["a"], r["b"]) == ("domix", "lora_fa"))
    assert row["by_seed"] == pytest.approx({"seed1": 100 * (0.05 - 0.01) / 2, "seed2": 100 * (0.02 + 0.06) / 2})
    assert row["tasks"]["t1"]["n"] == [3, 3]
    pooled = row["paired"]["macro_f1"]  # pairs at a seed both have: seed 1 on both tasks, seed 2 (two orders) on both
    assert pooled["tasks"]["t1"]["pairs"] == 3 and pooled["tasks"]["t2"]["pairs"] == 2
    assert pooled["tasks"]["t2"]["mean"] == pytest.approx(((0.30 - 0.31) + (0.36 - 0.30)) / 2)
    assert pooled["pooled"]["resampled"] == "seeds only"  # these records kept no test predictions


def test_input_shares_read_the_inputs_norms_and_leave_out_runs_without_them():
    def record(task, end, start, inputs=True):
        usage = {"domains": ["a", "b"], "norms": [[1.0, 1.0]]}
        if inputs:
            usage["inputs"] = {"examples": 2, "tokens": 9, "norms": {"start": [start], "end": [end]}}
        return {"row": "domix", "task": task, "bridge_usage": usage}

    records = [record("t1", [3.0, 1.0], [1.0, 1.0]), record("t1", [1.0, 1.0], [1.0, 1.0]), record("t2", [1.0, 3.0], [2.0, 2.0]),
               record("t3", [9.0, 1.0], [1.0, 1.0], inputs=False)]
    rows = bridge_shares(records, {"t1": "a", "t2": "b"}, lambda usage: run_shares(on_inputs(usage, "start")), on_inputs)
    assert [(r["task"], r["runs"]) for r in rows] == [("t1", 2), ("t2", 1)]  # t3 recorded no inputs
    assert rows[0]["shares"] == pytest.approx({"a": (0.75 + 0.5) / 2, "b": (0.25 + 0.5) / 2})
    assert rows[0]["change"]["a"] == pytest.approx((0.75 + 0.5) / 2 - 0.5)
    assert rows[1]["own_share"] == pytest.approx(0.75)
    assert bridge_shares(records, {})[-1]["task"] == "t3"  # the weights' shares read every run


def test_starting_shares_are_each_modules_own_update_size(llama_store, tmp_path):
    """At P = c·I domain j's part of a layer's update is c·s_j·B_j A_j: its share is ||s_j B_j A_j||_F over the sum,
    here formed as a full matrix from the PEFT files (the reading computes it without forming B A)."""
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "domix").symlink_to(llama_store)
    start = _starting_shares(tmp_path)
    domains = sorted(p.name for p in llama_store.iterdir() if (p / "adapter_model.safetensors").is_file())
    weights = {d: load_file(str(llama_store / d / "adapter_model.safetensors")) for d in domains}
    scale = {d: (lambda c: c["lora_alpha"] / c["r"])(json.loads((llama_store / d / "adapter_config.json").read_text())) for d in domains}
    layers = sorted({k.split(".lora_A")[0].replace("base_model.model.", "") for k in weights[domains[0]] if ".lora_A" in k})[:3]

    def update(d, layer):
        a = next(v for k, v in weights[d].items() if k.endswith(f"{layer}.lora_A.weight"))
        b = next(v for k, v in weights[d].items() if k.endswith(f"{layer}.lora_B.weight"))
        return float(torch.linalg.matrix_norm(scale[d] * (b.double() @ a.double())))

    norms = [[update(d, layer) for d in domains] for layer in layers]
    want = {d: sum(n[j] / sum(n) for n in norms) / len(norms) for j, d in enumerate(domains)}
    assert start({"domains": domains, "layers": layers}) == pytest.approx(want, rel=1e-9)
