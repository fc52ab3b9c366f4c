import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from domix.base_model import (
    default_target_modules,
    head_module_name,
    load_base_model,
    resolve_target_modules,
    weights_fingerprint,
)
from domix.errors import DomixError


def test_objective_follows_the_architecture(tiny_bert, tiny_llama):
    assert load_base_model(str(tiny_bert)).objective == "mlm"
    assert load_base_model(str(tiny_llama)).objective == "clm"


def test_default_targets_are_every_linear_layer_of_every_block(tiny_bert, tiny_llama):
    bert = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    _, matched = resolve_target_modules(bert, None)
    assert len(matched) == 2 * 6  # query, key, value, attention output, FFN in, FFN out
    assert all(re.match(r"bert\.encoder\.layer\.\d\.", n) for n in matched)  # not the MLM head's dense
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama)
    _, matched = resolve_target_modules(llama, None)
    assert len(matched) == 2 * 7
    assert {n.rsplit(".", 1)[1] for n in matched} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert re.fullmatch(default_target_modules(llama), "model.layers.1.mlp.down_proj")


def test_named_targets_and_targets_that_match_nothing(tiny_llama):
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama)
    _, matched = resolve_target_modules(llama, ["q_proj", "v_proj"])
    assert len(matched) == 4
    with pytest.raises(DomixError, match=r"match no linear layer.*q_proj"):
        resolve_target_modules(llama, ["query"])
    with pytest.raises(DomixError, match=r"\['qproj'\] match no linear layer"):
        resolve_target_modules(llama, ["q_proj", "qproj"])


def test_fingerprint_ignores_precision_and_head_and_sees_changes(tiny_llama):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    fp = weights_fingerprint(model)
    assert weights_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)) == fp
    assert weights_fingerprint(AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)) == fp
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] += 0.5
    assert weights_fingerprint(model) != fp


def test_head_module_name(tiny_bert, tiny_llama):
    assert head_module_name(AutoModelForMaskedLM.from_pretrained(tiny_bert)) == "cls"
    assert head_module_name(AutoModelForCausalLM.from_pretrained(tiny_llama)) == "lm_head"


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(DomixError, match="cannot load model"):
        load_base_model(str(tmp_path / "no-such-model"))
    with pytest.raises(DomixError, match="does not exist"):
        load_base_model(str(tmp_path / "model.gguf"))
