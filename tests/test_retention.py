"""Retention: the LM loss on general text of a task model's backbone under the base's LM head."""

import pytest
import torch

from domix.base_model import load_base_model
from domix.errors import DomixError
from domix.finetuning.model import classification_model
from domix.finetuning.run import finetune
from domix.pretraining.config import PretrainConfig
from domix.engine.loop import evaluate
from domix.retention import backbone, general_blocks, retention

from conftest import make_corpus
from test_finetune import cfg

LABELS = ["bio", "cs", "food"]


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("general") / "general.txt", 120, seed=7)


def test_an_untouched_backbone_keeps_the_base_loss_exactly(tiny_model, general):
    model, _ = classification_model(str(tiny_model), LABELS, torch.float64, seed=0)
    r = retention(model, str(tiny_model), str(general), seq_len=16, max_blocks=8, batch_size=4, device="cpu")
    assert r["sequences"] == 8 and r["lm_loss_base"] > 0
    assert r["lm_loss_after"] == r["lm_loss_base"] and r["change"] == 0


def test_a_changed_backbone_is_scored_as_the_base_lm_with_its_weights(tiny_model, general):
    """The loss after equals that of the base LM model with the task backbone's weights loaded into it."""
    model, _ = classification_model(str(tiny_model), LABELS, torch.float64, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in backbone(model).parameters():
            p.add_(0.05 * torch.randn_like(p))
    r = retention(model, str(tiny_model), str(general), seq_len=16, max_blocks=8, batch_size=4, device="cpu")

    lm = load_base_model(str(tiny_model), dtype=torch.float64)
    missing = getattr(lm.model, lm.model.base_model_prefix).load_state_dict(backbone(model).state_dict(), strict=False)
    assert not missing.missing_keys  # every backbone weight of the LM came from the task model
    blocks = general_blocks(str(general), lm.tokenizer, lm.objective, 16, 8)
    expected = evaluate(lm.model, blocks, lm.objective, lm.tokenizer, PretrainConfig(batch_size=4, seq_len=16), "cpu")
    assert r["lm_loss_after"] == pytest.approx(expected, abs=1e-6)  # recorded to 6 decimals
    assert abs(r["change"]) > 1e-4  # the backbone moved, so its loss did


def test_finetune_records_retention_full_moves_it_lora_starts_from_the_base(llama_store, tiny_llama, task, general, tmp_path):
    full = finetune(cfg(llama_store, task, tmp_path / "full", method="full", lr=1e-2, epochs=2, general=str(general), general_blocks=6))
    r = full["retention"]
    assert r["sequences"] == 6 and r["corpus"] == str(general)
    assert abs(r["change"]) > 1e-4  # every weight trained
    lora = finetune(cfg(llama_store, task, tmp_path / "lora", method="lora", lr=1e-2, epochs=2, general=str(general), general_blocks=6))
    assert lora["retention"]["lm_loss_base"] == r["lm_loss_base"]  # the same sequences and base
    assert finetune(cfg(llama_store, task, tmp_path / "plain", epochs=1))["retention"] is None


def test_a_missing_general_corpus_is_refused_before_training(llama_store, task, tmp_path):
    with pytest.raises(DomixError, match="does not exist"):
        finetune(cfg(llama_store, task, tmp_path / "run", general=str(tmp_path / "nope.txt")))
    assert not (tmp_path / "run" / "checkpoint").exists()
