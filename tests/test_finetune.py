import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from domix.methods.bridge.model import bridged_layers
from domix.cli import main
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.finetuning.evaluate import evaluate_file, load_any
from domix.finetuning.model import export, load_task_model
from domix.finetuning.run import finetune, predict
from domix.store import load_store
from domix.tasks import encode, read_split

from conftest import make_task, make_tiny_model


def cfg(store, task, out, **kw) -> FinetuneConfig:
    settings = dict(epochs=3, batch_size=16, lr=5e-3, max_length=32)
    settings.update(kw)
    return FinetuneConfig(modules=str(store), task=str(task), out=str(out), **settings)


def logits_of(folder, split_file) -> torch.Tensor:
    model, tokenizer, _, max_length = load_any(folder)
    return predict(model, encode(read_split(split_file, "x"), tokenizer, max_length or 32), tokenizer.pad_token_id, 8, "cpu")


@pytest.fixture(params=["llama", "bert"])
def store(request, llama_store, bert_store):
    return llama_store if request.param == "llama" else bert_store


def test_domix_finetune_learns_and_trains_only_bridge_b_and_head(store, llama_store, task, tmp_path):
    # chance is 1/3; the tiny BERT learns slower, through its freshly initialised pooler, and at 2e-2 plain LoRA is
    # already unstable on it (test accuracy 0.34-0.63 over three seeds), so both run at 1e-2. (At 2e-2 domix's default
    # bridge steps P by 0.2 a step against entries of 1/Σr = 1/6 and the tiny Llama stays near chance.)
    epochs, floor, lr = (4, 0.7, 1e-2) if store == llama_store else (8, 0.42, 1e-2)
    record = finetune(cfg(store, task, tmp_path / "run", lr=lr, epochs=epochs))
    assert record["test"]["accuracy"] > floor
    assert len(record["dev_history"]) == epochs and 1 <= record["best_epoch"] <= epochs
    assert record["test"]["micro_f1"] == record["test"]["accuracy"]
    weights = load_file(str(tmp_path / "run" / "model" / "task_model.safetensors"))
    bridge_params = sum(v.numel() for k, v in weights.items() if k.endswith((".bridge", ".lora_B")))
    head_params = sum(weights[k].numel() for k in record["head"])
    assert record["trainable_parameters"] == bridge_params + head_params
    # A_cat is the modules' A, untouched; B_cat moved away from the modules' B (not re-concatenated on save)
    modules = load_store(store)
    layer = record["layers"][0]
    assert torch.equal(weights[f"{layer}.lora_A"], torch.cat([m.lora_A[layer] for m in modules]))
    assert not torch.equal(weights[f"{layer}.lora_B"], torch.cat([m.lora_B[layer] for m in modules], dim=1))


def test_task_model_reloads_and_exports_to_the_same_logits(store, task, tmp_path):
    record = finetune(cfg(store, task, tmp_path / "run", epochs=2))
    folder = tmp_path / "run" / "model"
    reloaded = logits_of(folder, task / "test.jsonl")
    assert evaluate_file(folder, task / "test.jsonl", tmp_path / "pred.jsonl") == pytest.approx(record["test"], abs=1e-9)
    assert len((tmp_path / "pred.jsonl").read_text().splitlines()) == 32
    export(folder, tmp_path / "exported")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported")  # transformers alone
    assert type(plain).__module__.startswith("transformers.")
    assert torch.allclose(logits_of(tmp_path / "exported", task / "test.jsonl"), reloaded, atol=1e-5)
    assert not bridged_layers(plain)


def test_domain_order_does_not_change_the_result(llama_store, task, tmp_path):
    """In float32, bit for bit: the bridge lays the modules out by name, so no sum runs in another order."""
    a = finetune(cfg(llama_store, task, tmp_path / "ab", domains=["food", "bio"], epochs=2))
    b = finetune(cfg(llama_store, task, tmp_path / "ba", domains=["bio", "food"], epochs=2))
    assert a["test"] == b["test"] and a["loss_curve"] == b["loss_curve"] and a["dev_history"] == b["dev_history"]
    assert a["bridge_usage"]["domains"] == b["bridge_usage"]["domains"] == ["bio", "food"]
    assert [m["name"] for m in a["modules"]] == ["food", "bio"]  # the record keeps the order the user gave
    saved_a = load_file(str(tmp_path / "ab" / "model" / "task_model.safetensors"))
    saved_b = load_file(str(tmp_path / "ba" / "model" / "task_model.safetensors"))
    assert saved_a.keys() == saved_b.keys() and all(torch.equal(saved_a[k], saved_b[k]) for k in saved_a)
    modules = {m.name: m for m in load_store(llama_store)}
    layer = a["layers"][0]
    assert torch.equal(saved_a[f"{layer}.lora_A"], torch.cat([modules["bio"].lora_A[layer], modules["food"].lora_A[layer]]))


def test_lora_baseline_has_the_same_total_rank_and_exports(llama_store, task, tmp_path):
    record = finetune(cfg(llama_store, task, tmp_path / "run", method="lora"))
    config = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert config["r"] == 6  # ranks 4 + 2
    assert record["test"]["accuracy"] > 0.5
    export(tmp_path / "run" / "model", tmp_path / "exported")
    assert torch.allclose(logits_of(tmp_path / "exported", task / "test.jsonl"), logits_of(tmp_path / "run" / "model", task / "test.jsonl"), atol=1e-5)


class Crash(Exception):
    pass


def test_interrupted_finetune_resumes_to_the_same_model(llama_store, task, tmp_path):
    reference = finetune(cfg(llama_store, task, tmp_path / "reference", checkpoint_every=4))

    def crash(task, step, loss, model):
        if step == 11:  # in epoch 2, after the checkpoint at step 8
            raise Crash

    with pytest.raises(Crash):
        finetune(cfg(llama_store, task, tmp_path / "run", checkpoint_every=4), on_step=crash)
    resumed = finetune(cfg(llama_store, task, tmp_path / "run", checkpoint_every=4))
    assert resumed["test"] == reference["test"] and resumed["dev_history"] == reference["dev_history"]
    assert main(["report", str(tmp_path / "reference"), str(tmp_path / "run")]) == 0
    a = load_file(str(tmp_path / "reference" / "model" / "task_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model" / "task_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DomixError, match="holds a finished run"):
        finetune(cfg(llama_store, task, tmp_path / "run", checkpoint_every=4))


def test_modules_from_another_base_are_refused(llama_store, task, tmp_path):
    other = make_tiny_model(tmp_path / "other-llama", "llama", seed=1)
    with pytest.raises(DomixError, match="trained on another base model"):
        finetune(cfg(llama_store, task, tmp_path / "run", model=str(other)))


def test_bad_task_data_is_refused(llama_store, task, tmp_path, capsys):
    bad = make_task(tmp_path / "unseen")
    (bad / "test.jsonl").write_text((bad / "test.jsonl").read_text() + json.dumps({"text": "the food", "label": "wine"}) + "\n")
    with pytest.raises(DomixError, match=r"test split has label\(s\) \['wine'\] that train never has"):
        finetune(cfg(llama_store, bad, tmp_path / "a"))
    missing = make_task(tmp_path / "missing")
    (missing / "dev.jsonl").unlink()
    with pytest.raises(DomixError, match="dev split .* does not exist"):
        finetune(cfg(llama_store, missing, tmp_path / "b"))
    nocol = make_task(tmp_path / "nocol")
    (nocol / "train.jsonl").write_text(json.dumps({"sentence": "x", "label": "food"}) + "\n")
    with pytest.raises(DomixError, match="has no 'text' column"):
        finetune(cfg(llama_store, nocol, tmp_path / "c"))
    empty = tmp_path / "empty-store"
    empty.mkdir()
    with pytest.raises(DomixError, match="holds no finished domain module"):
        finetune(cfg(empty, task, tmp_path / "d"))
    assert main(["finetune", "--modules", str(empty), "--task", str(task), "--out", str(tmp_path / "e")]) == 2
    assert "holds no finished domain module" in capsys.readouterr().err
