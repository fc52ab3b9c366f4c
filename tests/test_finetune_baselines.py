"""The fine-tuning baselines: fixed-bridge concatenation, LoRA/DoRA from the base or a module, full fine-tuning."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from domix.methods.bridge.model import bridge_usage, bridged_layers, compose
from domix.cli import main
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.finetuning.model import classification_model, export
from domix.methods.peft.method import build_peft
from domix.methods.registry import task_method
from domix.finetuning.run import RESULT_FILE, finetune
from domix.methods.bridge.config import BridgeSettings
from domix.store import load_store, merge_into

from test_finetune import cfg, logits_of

LABELS = ["bio", "cs", "food"]


def hparams(method: str, **kw) -> SimpleNamespace:
    """A task method's settings as a run gives them: the bridge's own (P and B at the run's rate, no fresh block)."""
    bridge = BridgeSettings(p_init="scaled_identity", p_lr=None, b_lr=None, p_weight_decay=0.0, new_rank=None)
    return SimpleNamespace(**{**dict(method=method, lr=1e-3, weight_decay=0.0, seed=0, method_options=bridge), **kw})


def base_model(tiny_llama):
    return classification_model(str(tiny_llama), LABELS, torch.float64, seed=0)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(3, 30, (3, 10), generator=torch.Generator().manual_seed(0))


def test_cat_equals_peft_add_weighted_adapter_cat(tiny_llama, llama_store):
    from peft import PeftModel

    model, head = base_model(tiny_llama)
    model, groups = task_method("cat").build(model, head, load_store(llama_store, ["food", "bio"]), hparams("cat"))
    trained = {id(p) for g in groups for p in g["params"]}
    assert all(id(m.bridge) not in trained and not m.bridge.requires_grad for m in bridged_layers(model).values())

    reference, _ = base_model(tiny_llama)
    reference = PeftModel.from_pretrained(reference, llama_store / "food", adapter_name="food")
    reference.load_adapter(llama_store / "bio", adapter_name="bio")
    reference.add_weighted_adapter(["food", "bio"], [1.0, 1.0], "food_bio", combination_type="cat")
    reference.set_adapter("food_bio")
    assert torch.allclose(logits(model, IDS), logits(reference, IDS), atol=1e-10, rtol=0)


def test_cat_run_keeps_the_bridge_at_identity_and_trains_b(llama_store, task, tmp_path):
    record = finetune(cfg(llama_store, task, tmp_path / "run", method="cat", epochs=2))
    weights = load_file(str(tmp_path / "run" / "model" / "task_model.safetensors"))
    modules = load_store(llama_store)
    layer = record["layers"][0]
    assert torch.equal(weights[f"{layer}.bridge"], torch.eye(6))
    assert not torch.equal(weights[f"{layer}.lora_B"], torch.cat([m.lora_B[layer] for m in modules], dim=1))
    bridge_params = sum(v.numel() for k, v in weights.items() if k.endswith(".bridge"))
    assert record["trainable_parameters"] == sum(v.numel() for k, v in weights.items() if k.endswith(".lora_B")) + sum(
        weights[k].numel() for k in record["head"])
    assert bridge_params > 0 and record["bridge_usage"]["domains"] == ["bio", "food"]
    on_inputs = record["bridge_usage"]["inputs"]  # the test inputs, read by the update as it started and as trained
    assert set(on_inputs["norms"]) == {"start", "end"} and on_inputs["tokens"] > on_inputs["examples"] > 0
    assert on_inputs["norms"]["start"] != on_inputs["norms"]["end"]  # B trained


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_peft_from_a_module_starts_at_the_base_plus_that_module(method, tiny_llama, llama_store):
    module = load_store(llama_store, ["food"])[0]
    model, head = base_model(tiny_llama)
    peft_model, _ = build_peft(model, head, [], hparams(method), rank=99, init=module, use_dora=method == "dora")
    merged, _ = base_model(tiny_llama)
    merge_into(merged, module)
    assert torch.allclose(logits(peft_model, IDS), logits(merged, IDS), atol=1e-10, rtol=0)
    fresh, _ = base_model(tiny_llama)
    assert not torch.allclose(logits(fresh, IDS), logits(merged, IDS), atol=1e-6)  # the module does change the model
    config = peft_model.peft_config["default"]
    assert config.r == module.rank and config.use_dora == (method == "dora")


def test_dora_from_a_module_trains_exports_and_reloads(llama_store, task, tmp_path):
    record = finetune(cfg(llama_store, task, tmp_path / "run", method="dora", init_module="food", epochs=2))
    config = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert config["use_dora"] and config["r"] == 4 and record["init_module"] == "food"
    assert record["modules"][0]["name"] == "food"
    export(tmp_path / "run" / "model", tmp_path / "exported")
    assert torch.allclose(logits_of(tmp_path / "exported", task / "test.jsonl"), logits_of(tmp_path / "run" / "model", task / "test.jsonl"), atol=1e-5)


def test_full_finetuning_trains_every_weight_and_reloads(tiny_llama, task, tmp_path):
    record = finetune(FinetuneConfig(model=str(tiny_llama), task=str(task), out=str(tmp_path / "run"), method="full",
                                     epochs=3, lr=2e-3, max_length=32))
    assert record["trainable_parameters"] == record["total_parameters"]
    assert record["test"]["accuracy"] > 0.5
    assert len(record["loss_curve"]) == record["steps"] and record["loss_curve"][-1][1] < record["loss_curve"][0][1]
    assert json.loads((tmp_path / "run" / RESULT_FILE).read_text())["test"] == record["test"]
    reloaded = logits_of(tmp_path / "run" / "model", task / "test.jsonl")
    export(tmp_path / "run" / "model", tmp_path / "exported")
    assert torch.allclose(logits_of(tmp_path / "exported", task / "test.jsonl"), reloaded, atol=1e-6)


def test_no_save_model_keeps_only_the_scores(tiny_llama, task, tmp_path):
    record = finetune(FinetuneConfig(model=str(tiny_llama), task=str(task), out=str(tmp_path / "run"), method="lora",
                                     epochs=1, max_length=32, save_model=False))
    assert not (tmp_path / "run" / "model").exists()
    assert json.loads((tmp_path / "run" / RESULT_FILE).read_text())["test"] == record["test"]
    assert main(["report", str(tmp_path / "run")]) == 0


def test_bridge_usage_is_each_domains_update_norm(tiny_llama, llama_store):
    modules = load_store(llama_store, ["food", "bio"])
    model, _ = base_model(tiny_llama)
    compose(model, modules)
    with torch.no_grad():
        for layer in bridged_layers(model).values():
            layer.bridge.copy_(torch.eye(layer.rank, dtype=layer.bridge.dtype))  # P = I: each domain feeds its own update
    usage = bridge_usage(model)
    assert usage["domains"] == ["food", "bio"] and usage["layers"] == list(bridged_layers(model))
    for layer, row in zip(usage["layers"], usage["norms"]):
        expected = [float(torch.linalg.matrix_norm(m.delta(layer))) for m in modules]
        assert row == pytest.approx(expected, rel=1e-6)


def test_baseline_settings_are_checked(llama_store, task, tmp_path, capsys):
    with pytest.raises(DomixError, match="--init-module names a module of a store"):
        FinetuneConfig(model="x", task=str(task), out=str(tmp_path / "a"), method="lora", init_module="food").validate()
    with pytest.raises(DomixError, match="does not apply to method domix"):
        FinetuneConfig(modules=str(llama_store), task=str(task), out=str(tmp_path / "b"), init_module="food").validate()
    with pytest.raises(DomixError, match="has no domain"):
        finetune(cfg(llama_store, task, tmp_path / "c", method="lora", init_module="cooking"))
    assert main(["finetune", "--model", "x", "--task", str(task), "--out", str(tmp_path / "d"), "--method", "cat"]) == 2
    assert "method cat needs the domain modules" in capsys.readouterr().err
