"""The chunked language-model loss against the plain computation: F.cross_entropy on whole logits, and
the loss transformers computes itself, with their gradients, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domix import lm_loss
from domix.batches import IGNORE_INDEX
from domix.lm_loss import _LinearCrossEntropy, lm_losses


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_segment_sums_and_gradients_equal_cross_entropy_on_whole_logits():
    g = torch.Generator().manual_seed(0)
    n, d, vocab = 23, 6, 17
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    bias = torch.randn(vocab, generator=g, dtype=torch.float64)
    targets = torch.randint(vocab, (n,), generator=g)
    segment = torch.tensor([0] * 9 + [1] * 6 + [2] * 8)
    scale = torch.tensor([1 / 9] * 9 + [1 / 6] * 6 + [0.25] * 8, dtype=torch.float64)
    upstream = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)  # a different gradient into each segment

    got = _LinearCrossEntropy.apply(hidden, weight, bias, targets, scale, segment, 3, 4)  # chunks of 4 rows
    (got * upstream).sum().backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    token = F.cross_entropy(hidden @ weight.t() + bias, targets, reduction="none") * scale
    want = torch.stack([token[segment == k].sum() for k in range(3)])
    (want * upstream).sum().backward()
    _close(got, want)
    _close(grad, hidden.grad)


def test_a_trainable_projection_gets_the_gradient_of_the_whole_logits():
    g = torch.Generator().manual_seed(1)
    n, d, vocab = 11, 5, 13
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(vocab, (n,), generator=g)
    scale = torch.full((n,), 1 / n, dtype=torch.float64)

    got = _LinearCrossEntropy.apply(hidden, weight, bias, targets, scale, torch.zeros(n, dtype=torch.long), 1, 3)
    (got[0] * 1.7).backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    want = F.cross_entropy(hidden @ weight.t() + bias, targets)
    (want * 1.7).backward()
    _close(got[0], want)
    for a, t in zip(grads, (hidden, weight, bias)):
        _close(a, t.grad)


def _plain(model, ids, labels, objective: str) -> torch.Tensor:
    """The plain computation: the model's whole logits (float64 here; transformers' own loss would cast
    them to float32), shifted for a causal LM as transformers does, and F.cross_entropy."""
    logits = model(input_ids=ids).logits
    if objective == "clm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def _model(path, objective: str, lora: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    model = auto.from_pretrained(path, dtype=torch.float64)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    return model.train()


def _batch(objective: str, vocab: int, rows: int = 5, length: int = 12):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    labels = ids.clone()
    if objective == "mlm":
        labels[torch.rand(ids.shape, generator=g) > 0.3] = IGNORE_INDEX
        labels[:, 0] = ids[:, 0]  # every row predicts something
    else:
        labels[1, :4] = IGNORE_INDEX  # a prompt that is not predicted
    return ids, labels


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_loss_and_gradients_equal_what_transformers_computes(tiny_model, lora, monkeypatch):
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 1)  # chunks of the 128-token minimum: several per batch
    objective = "mlm" if "bert" in str(tiny_model) else "clm"
    model = _model(tiny_model, objective, lora)
    ids, labels = _batch(objective, model.config.vocab_size, rows=6, length=40)
    torch.manual_seed(0)
    ours = lm_losses(model, ids, labels, objective)[0]
    ours.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks
    theirs = _plain(model, ids, labels, objective)
    theirs.backward()
    _close(ours, theirs)
    torch.manual_seed(0)
    torch.testing.assert_close(ours.detach(), model(input_ids=ids, labels=labels).loss.detach().double(), rtol=1e-5, atol=0)
    for n, p in model.named_parameters():
        if p.requires_grad:
            _close(got[n], p.grad)


def test_each_span_is_the_mean_over_its_own_rows(tiny_llama):
    model = _model(tiny_llama, "clm", lora=True).eval()
    ids, labels = _batch("clm", model.config.vocab_size)
    parts = lm_losses(model, ids, labels, "clm", spans=[(0, 2), (2, 5)])
    for part, (s, e) in zip(parts, [(0, 2), (2, 5)]):
        _close(part, _plain(model, ids[s:e], labels[s:e], "clm"))
    # a sum over the batch's tokens: each span over a given denominator
    summed = lm_losses(model, ids, labels, "clm", denominators=[1.0])[0]
    _close(summed, _plain(model, ids, labels, "clm") * lm_loss.predicted_tokens(labels, "clm"))


def test_nothing_of_vocabulary_size_is_kept_for_backward(tiny_llama):
    model = _model(tiny_llama, "clm", lora=True)
    ids, labels = _batch("clm", model.config.vocab_size)
    vocab = model.config.vocab_size
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        lm_losses(model, ids, labels, "clm")[0].backward()
    assert shapes and not [s for s in shapes if vocab in s]
    shapes.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        model(input_ids=ids, labels=labels).loss.backward()
    assert [s for s in shapes if vocab in s]  # the plain computation keeps its logits


def test_the_model_gets_its_projection_back(tiny_llama):
    model = _model(tiny_llama, "clm", lora=False)
    head = model.get_output_embeddings()
    ids, labels = _batch("clm", model.config.vocab_size)
    lm_losses(model, ids, labels, "clm")
    assert model.get_output_embeddings() is head
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size
