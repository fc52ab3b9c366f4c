"""Stores and task models written by an earlier domix (87241a2, before domix.methods and the one engine)
still load and give the same outputs: tests/data/legacy, made by its make_legacy.py."""

import json
from pathlib import Path

import pytest
import torch

from domix.finetuning.config import FinetuneConfig
from domix.finetuning.evaluate import load_any
from domix.finetuning.model import export
from domix.finetuning.run import finetune
from domix.engine.predict import predict
from domix.llm.model import load_causal_task_model
from domix.methods.registry import CLASSIFIER
from domix.store import describe_store
from domix.tasks import encode, read_split

LEGACY = Path(__file__).parent / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected_logits.json").read_text())


@pytest.fixture(autouse=True)
def in_legacy_folder(monkeypatch):
    monkeypatch.chdir(LEGACY)  # the records name the base model by the relative path it was given


def test_every_task_method_has_a_legacy_model():
    assert sorted(EXPECTED) == sorted(CLASSIFIER)  # the classifiers domix finetune writes


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_a_legacy_task_model_loads_and_predicts_as_it_did(method):
    model, tokenizer, _, max_length = load_any(LEGACY / "task-models" / method / "model")
    rows = encode(read_split(LEGACY / "task" / "test.jsonl", "test"), tokenizer, max_length)
    logits = predict(model, rows, tokenizer.pad_token_id, 8, "cpu")
    assert torch.allclose(logits, torch.tensor(EXPECTED[method]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["domix", "lora", "head"])
def test_a_legacy_task_model_exports(method, tmp_path):
    export(LEGACY / "task-models" / method / "model", tmp_path / "plain")
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").config.num_labels == 3


@pytest.mark.parametrize("method,store", [("domix", "store"), ("lora", "store"), ("mixda", "mixda-store"), ("mode", "mode-store")])
def test_a_legacy_store_composes(method, store, tmp_path):
    record = finetune(FinetuneConfig(method=method, modules=store, task="task", out=str(tmp_path / "run"), epochs=1,
                                     batch_size=8, lr=1e-2, max_length=16, save_model=False))
    # the base as the store names it, relative to where domix ran: no absolute path of this machine in the record
    assert record["steps"] == 3 and not Path(record["base_model"]["name"]).is_absolute()
    assert Path(record["base_model"]["name"]).resolve() == (LEGACY / "base").resolve()
    assert len(describe_store(store)) >= 2


def test_a_legacy_instruct_model_loads():
    model, tokenizer, record = load_causal_task_model(LEGACY / "instruct-model" / "model")
    assert record["method"] == "domix"
    ids = tokenizer("pizza wine", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_checkpoint_of_an_earlier_version_resumes_into_the_moved_progress_class(tmp_path, monkeypatch):
    """Earlier versions pickled their progress as domix.pretrain.loop.TrainResult, a module that is gone."""
    import dataclasses
    import sys
    import types

    from domix.engine import checkpoint
    from domix.engine.loop import TrainResult

    old = types.ModuleType("domix.pretrain.loop")

    @dataclasses.dataclass
    class OldResult:  # the fields it had
        steps: int
        tokens_seen: int
        losses: list
        train_seconds: float = 0.0

    OldResult.__module__, OldResult.__qualname__, OldResult.__name__ = "domix.pretrain.loop", "TrainResult", "TrainResult"
    old.TrainResult = OldResult
    monkeypatch.setitem(sys.modules, "domix.pretrain.loop", old)
    torch.save({"progress": OldResult(3, 48, [1.0, 0.9, 0.8], 1.5)}, tmp_path / "old.pt")
    monkeypatch.delitem(sys.modules, "domix.pretrain.loop")
    progress = checkpoint.read(tmp_path / "old.pt")["progress"]
    assert isinstance(progress, TrainResult) and progress.steps == 3 and progress.losses == [1.0, 0.9, 0.8]
