"""The one engine: every method, in both stages, gets the same guards and options by construction.

Each method runs with --gradient-checkpointing (it must be on while training, and for the fused
trainers it must not change the weights), and with a loss forced to NaN after its first step (it
must stop with the one non-finite message, naming the step and what trains).
"""

import math

import pytest
import torch
from safetensors.torch import load_file

from domix.errors import DomixError
from domix.finetuning.run import finetune
from domix.methods.registry import CLASSIFIER, STAGE1, STAGE2
from domix.pretraining.config import PretrainConfig
from domix.pretraining.run import pretrain

from test_finetune import cfg as finetune_cfg
from test_mixda import general, mixda_store  # noqa: F401  (fixtures)
from test_mode import mode_stores  # noqa: F401  (fixture)


def checkpointing_on(model) -> bool:
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(target, "is_gradient_checkpointing", False))


def poison(model) -> None:
    """Make every trainable weight NaN, so the next step's loss is NaN."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(math.nan)


def store_for(method: str, llama_store, mixda_store, mode_stores):  # noqa: F811
    return {"mixda": mixda_store, "mode": mode_stores["llama"]}.get(method, llama_store)


def stage2_cfg(method, store, task, out, **kw):
    settings = dict(method=method, epochs=1, train_limit=24, eval_limit=8, batch_size=8)
    if STAGE2[method].store is None or not STAGE2[method].modules_required:
        settings["model"] = None  # the base the modules name
    return finetune_cfg(store, task, out, **{**settings, **kw})


@pytest.mark.parametrize("method", CLASSIFIER)  # every method domix finetune runs (base trains nothing)
def test_every_task_method_trains_with_gradient_checkpointing(method, llama_store, mixda_store, mode_stores, task, tmp_path):  # noqa: F811
    seen = []
    store = store_for(method, llama_store, mixda_store, mode_stores)
    record = finetune(stage2_cfg(method, store, task, tmp_path / "run", gradient_checkpointing=True, save_model=False),
                      on_step=lambda label, step, loss, model: seen.append(checkpointing_on(model)))
    assert seen and all(seen) and record["steps"] == 3


@pytest.mark.parametrize("method", CLASSIFIER)
def test_every_task_method_stops_on_a_non_finite_loss(method, llama_store, mixda_store, mode_stores, task, tmp_path):  # noqa: F811
    store = store_for(method, llama_store, mixda_store, mode_stores)

    def nan_after_first_step(label, step, loss, model):
        if step == 1:
            poison(model)

    with pytest.raises(DomixError, match=r"non-finite loss at step 2 of task '[^']+'; training stopped .* --lr"):
        finetune(stage2_cfg(method, store, task, tmp_path / "run"), on_step=nan_after_first_step)


def stage1_cfg(method, model, corpora, out, general, **kw):  # noqa: F811
    settings = dict(method=method, steps=4, batch_size=4, seq_len=16, lr=1e-2, heldout_max_blocks=2, checkpoint_every=2,
                    dropout=0.1, mode_block_size=1, general=str(general) if STAGE1[method].needs_general else None)
    return PretrainConfig(model=str(model), domains={k: str(v) for k, v in corpora.items()}, out=str(out), **{**settings, **kw})


STAGE1_RUNS = [("domix", True), ("domix", False)] + [(m, None) for m in STAGE1 if m != "domix"]


@pytest.mark.parametrize("method,fused", STAGE1_RUNS)
def test_every_pretraining_method_trains_with_gradient_checkpointing(method, fused, tiny_bert, corpora, general, tmp_path):  # noqa: F811
    seen = []
    extra = {} if fused is None else {"fused": fused}
    pretrain(stage1_cfg(method, tiny_bert, corpora, tmp_path / "run", general, gradient_checkpointing=True, **extra),
             on_step=lambda domain, step, loss, model: seen.append(checkpointing_on(model)))
    assert seen and all(seen)


@pytest.mark.parametrize("method", ["domix", "mixda"])
def test_gradient_checkpointing_leaves_fused_weights_unchanged(method, tiny_bert, corpora, general, tmp_path):  # noqa: F811
    """The fused layers read which rows are whose at run time, and MixDA runs the model twice a step (domain
    text, then general text): each block's recomputation must see the rows it first ran with."""
    weights = {}
    for on in (False, True):
        out = tmp_path / f"run-{on}"
        pretrain(stage1_cfg(method, tiny_bert, corpora, out, general, gradient_checkpointing=on, dtype="float64"))
        weights[on] = {name: load_file(str(next((out / name).glob("*.safetensors")))) for name in corpora}
    for name in corpora:
        for key, value in weights[False][name].items():
            assert torch.allclose(weights[True][name][key], value, atol=1e-10, rtol=0), (name, key)
        assert any(v.abs().sum() > 0 for k, v in weights[True][name].items() if "up" in k or "lora_B" in k)


@pytest.mark.parametrize("method,fused", STAGE1_RUNS)
def test_every_pretraining_method_stops_on_a_non_finite_loss(method, fused, tiny_llama, corpora, general, tmp_path):  # noqa: F811
    extra = {} if fused is None else {"fused": fused}

    def nan_after_first_step(domain, step, loss, model):
        if step == 1:
            poison(model)

    with pytest.raises(DomixError, match=r"non-finite loss at step 2 of domain '(food|bio|joint)'; training stopped .* --lr"):
        pretrain(stage1_cfg(method, tiny_llama, corpora, tmp_path / "run", general, **extra), on_step=nan_after_first_step)


def scalars(logdir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in {f.parent for f in logdir.rglob("events.out.tfevents.*")}:
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


@pytest.mark.parametrize("method,fused", [("domix", True), ("domix", False), ("mixda", None), ("ncl_lora", None)])
def test_every_pretraining_loop_logs_its_training_to_tensorboard(method, fused, tiny_llama, corpora, general, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard")
    extra = {} if fused is None else {"fused": fused}
    pretrain(stage1_cfg(method, tiny_llama, corpora, tmp_path / "run", general, **extra))
    assert {"train/loss", "train/lr"} <= scalars(tmp_path / "run" / "tensorboard")


def test_fine_tuning_logs_training_and_dev_scores_to_tensorboard(llama_store, task, tmp_path):
    pytest.importorskip("tensorboard")
    finetune(stage2_cfg("domix", llama_store, task, tmp_path / "run", save_model=False))
    assert {"train/loss", "train/lr", "dev/accuracy", "dev/macro_f1"} <= scalars(tmp_path / "run" / "tensorboard")


def test_predict_batches_by_length_and_returns_logits_in_order(tiny_llama):
    """The reference: transformers on each example alone (no padding at all)."""
    from transformers import AutoModelForSequenceClassification

    from domix.engine.predict import predict

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3, dtype=torch.float64)
    model.config.pad_token_id = 2
    rows = [torch.randint(3, 30, (n,)).tolist() for n in (9, 2, 14, 5, 5, 11, 3)]
    alone = torch.cat([model(input_ids=torch.tensor([r])).logits for r in rows]).float()
    torch.testing.assert_close(predict(model, rows, 2, 3, "cpu"), alone, atol=1e-6, rtol=1e-5)
    assert predict(model, [], 2, 3, "cpu").numel() == 0
