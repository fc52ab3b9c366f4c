import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from domix.methods.bridge import BridgeConfig, BridgedLinear, compose, fold
from domix.methods.bridge.layer import _BridgePath
from domix.methods.bridge.model import bridged_layers, fresh_module
from domix.store import load_store, merge_into


def test_bridge_path_gradients_are_exact():
    torch.manual_seed(0)
    A, P, B = torch.randn(5, 7).double(), torch.randn(5, 5).double(), torch.randn(3, 5).double()
    s = torch.tensor([2.0, 2.0, 2.0, 0.5, 0.5]).double()
    W, b = torch.randn(3, 7).double(), torch.randn(3).double()  # the frozen base layer
    x = torch.randn(2, 4, 7).double()
    for t in (x, P, B):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, P, B: _BridgePath.apply(x, W, b, A, P, B, s), (x, P, B))
    y = _BridgePath.apply(x, W, b, A, P, B, s)  # and the formula y = W x + b + B diag(s) P A x, by hand
    torch.testing.assert_close(y, x @ W.t() + b + x @ A.t() @ P.t() @ torch.diag(s) @ B.t(), rtol=1e-12, atol=1e-12)


def test_identity_bridge_equals_the_sum_of_the_modules(tiny_llama, llama_store):
    modules = load_store(llama_store)
    ids = torch.randint(3, 30, (2, 10))
    composed = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    compose(composed, modules, BridgeConfig(p_init="identity"))
    merged = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    for m in modules:
        merge_into(merged, m)
    with torch.no_grad():
        assert torch.allclose(composed(ids).logits, merged(ids).logits, atol=1e-10)
    layer = next(iter(bridged_layers(composed).values()))
    assert layer.bridge.shape == (6, 6)  # ranks 4 + 2
    assert layer.scales.tolist() == [16 / 2] * 2 + [16 / 4] * 4  # bio (rank 2), then food (rank 4)


def test_default_bridge_starts_at_the_published_scaled_identity_and_folds_exactly(tiny_llama, llama_store):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    compose(model, load_store(llama_store))
    layer = next(iter(bridged_layers(model).values()))
    assert torch.equal(layer.bridge, torch.eye(6, dtype=torch.float64) / 6)  # c = 1/Σr, Σr = 6
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".bridge", ".lora_B")) for n in trainable)
    with torch.no_grad():
        layer.bridge.add_(torch.randn(6, 6, dtype=torch.float64) * 0.1)
    ids = torch.randint(3, 30, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
        fold(model)
        assert not bridged_layers(model)
        assert torch.allclose(model(ids).logits, before, atol=1e-10)


def saved_bytes(module, x) -> int:
    """Bytes autograd keeps for backward across a forward pass (parameters excluded)."""
    keep = {p.data_ptr() for p in module.parameters()} | {b.data_ptr() for b in module.buffers()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in keep:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum().backward()
    return total


def test_bridged_layer_keeps_sigma_r_numbers_per_token_not_the_input():
    torch.manual_seed(0)
    d_in, d_out, rank, tokens = 256, 256, 16, 512
    base = torch.nn.Linear(d_in, d_out).requires_grad_(False)
    bridged = BridgedLinear(base, torch.randn(rank, d_in), torch.randn(d_out, rank), torch.full((rank,), 2.0), 1 / rank)
    x = torch.randn(tokens, d_in, requires_grad=True)
    assert saved_bytes(bridged, x) == tokens * rank * 4
    lora = get_peft_model(torch.nn.Sequential(torch.nn.Linear(d_in, d_out)), LoraConfig(r=rank, target_modules=["0"]))
    assert saved_bytes(lora, x) >= tokens * d_in * 4  # PEFT LoRA keeps the layer input for A's gradient


def test_a_fresh_block_goes_first_in_the_bridge_trains_its_b_and_folds(llama_store, task, tmp_path):
    """--new-rank: the published LLM setting's own block (random A, frozen; zero B, trained) before the modules."""
    import math

    from domix.finetuning.config import FinetuneConfig
    from domix.finetuning.evaluate import load_any
    from domix.finetuning.model import export, load_task_model
    from domix.finetuning.run import finetune, predict
    from domix.tasks import encode, read_split

    modules = load_store(llama_store)
    record = finetune(FinetuneConfig(modules=str(llama_store), task=str(task), out=str(tmp_path / "run"), new_rank=2, epochs=1,
                                     batch_size=16, lr=5e-3, max_length=32, dtype="float64"))
    assert record["bridge"]["new_rank"] == 2 and record["bridge_usage"]["domains"] == ["new"] + [m.name for m in modules]
    model, tokenizer, _ = load_task_model(tmp_path / "run" / "model")
    for name, layer in bridged_layers(model).items():
        key = next(k for k in modules[0].lora_A if name.endswith(k) or k.endswith(name.split("model.", 1)[-1]))
        d_in = layer.lora_A.shape[1]
        assert layer.lora_A.shape[0] == 2 + sum(m.rank for m in modules)
        fresh, rest = layer.lora_A[:2], layer.lora_A[2:]
        assert torch.equal(rest, torch.cat([m.lora_A[key] for m in modules]).to(rest.dtype))  # the modules' A, frozen
        assert fresh.abs().max() <= 1 / math.sqrt(d_in) and fresh.std() > 0.2 / math.sqrt(d_in)  # Kaiming-uniform
        assert torch.equal(fresh, fresh_module(modules, 2, seed=42).lora_A[key].to(fresh.dtype))  # as drawn: frozen
        assert layer.lora_B[:, :2].abs().max() > 0  # B of the fresh block started at zero and trained
        assert torch.allclose(layer.scales[:2], torch.full((2,), modules[0].scaling, dtype=layer.scales.dtype))
    rows = encode(read_split(task / "test.jsonl", "test"), tokenizer, 32)
    logits = predict(model, rows, tokenizer.pad_token_id, 8, "cpu")
    export(tmp_path / "run" / "model", tmp_path / "exported")  # W' = W + B_cat diag(s) P A_cat, the fresh block folded in
    plain, plain_tokenizer, _, _ = load_any(tmp_path / "exported")
    assert torch.allclose(predict(plain, rows, plain_tokenizer.pad_token_id, 8, "cpu"), logits, atol=1e-8)
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "exported" / "README.md")  # its model card, as huggingface_hub reads one
    record = load_task_model(tmp_path / "run" / "model")[2]
    assert card.data.pipeline_tag == "text-classification" and "domix" in card.data.tags
    assert f"labels {', '.join(record['labels'])}" in card.text and f"{record['test']['macro_f1']}" in card.text


def test_a_trainable_base_weight_gets_its_gradient_through_the_bridged_layer():
    torch.manual_seed(1)
    base = torch.nn.Linear(5, 4).double()  # trainable: the plain path, which keeps the input
    A, B, s = torch.randn(3, 5).double(), torch.randn(4, 3).double(), torch.full((3,), 2.0).double()
    bridged = BridgedLinear(base, A, B, s, 0.5, dtype=torch.float64)
    x = torch.randn(2, 5).double()
    bridged(x).sum().backward()
    want = torch.ones(2, 4).double().t() @ x  # d(sum y)/dW
    torch.testing.assert_close(base.weight.grad, want)


@pytest.mark.parametrize("p_init, c", [("scaled_identity", 1 / 6), ("average", 1 / 2), ("identity", 1.0), (0.25, 0.25)])
def test_bridge_learning_rates_by_hand(tiny_llama, llama_store, p_init, c):
    """P and B_cat train in their own groups: a number, N times the run's ("Nx"), or "matched": B at the run's
    divided by P's initial scale c, P at the run's times c (Adam moves a weight by about its learning rate a step,
    and c scales the effect of a B step on the output; see test_matched_rates_train_as_the_identity_bridge)."""
    from transformers import AutoModelForSequenceClassification

    from domix.finetuning.config import FinetuneConfig
    from domix.methods.registry import task_method

    modules = load_store(llama_store)  # ranks 4 + 2: Σr 6, N 2
    for p_lr, b_lr, want_p, want_b in [(None, None, 1e-2, 1e-2), ("10x", "matched", 0.1, 1e-2 / c), ("matched", "matched", 1e-2 * c, 1e-2 / c),
                                         (3e-3, "2.5x", 3e-3, 2.5e-2)]:
        cfg = FinetuneConfig(modules=str(llama_store), task="t", out="o", lr=1e-2, weight_decay=0.05, p_init=p_init, p_lr=p_lr,
                             b_lr=b_lr, p_weight_decay=0.0).validate()
        model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)
        model, groups = task_method("domix").build(model, ["score.weight"], modules, cfg)
        layers = bridged_layers(model).values()
        bridge, b, head = groups
        assert {id(p) for p in bridge["params"]} == {id(m.bridge) for m in layers} and bridge["weight_decay"] == 0.0
        assert {id(p) for p in b["params"]} == {id(m.lora_B) for m in layers} and b["weight_decay"] == 0.05
        assert head["params"] == [model.score.weight] and head["lr"] == 1e-2
        assert bridge["lr"] == pytest.approx(want_p) and b["lr"] == pytest.approx(want_b)
        assert all(torch.allclose(m.bridge, torch.eye(6) * c) for m in layers)


def test_a_bridge_step_of_half_its_entries_or_more_is_warned(tiny_llama, llama_store, capsys):
    """Adam moves P by about its learning rate a step; against P's entries c that is what the warning weighs."""
    from transformers import AutoModelForSequenceClassification

    from domix.finetuning.config import FinetuneConfig
    from domix.methods.registry import task_method

    bridge = BridgeConfig(p_lr="10x")  # c = 1/Σr
    assert bridge.fast_bridge_warning(1e-2, 24, 3) is None  # the real runs: 0.01 against 1/24
    line = bridge.fast_bridge_warning(0.1, 8, 2)  # the tiny encoder at lr 1e-2: 0.1 against 1/8
    assert "learning rate 0.1 moves P" in line and "entries of 0.125" in line and "--p-lr below 0.062" in line
    for lr, warned in ((1e-2, True), (1e-3, False)):  # Σr 6: P at 0.1 against 1/6, then 0.01
        cfg = FinetuneConfig(modules=str(llama_store), task="t", out="o", lr=lr).validate()
        model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3)
        task_method("domix").build(model, ["score.weight"], load_store(llama_store), cfg)
        assert ("the bridge may stop learning" in capsys.readouterr().out) == warned


@pytest.mark.parametrize("flag, value", [("--p-lr", "fast"), ("--p-lr", "matches"), ("--b-lr", "-1"), ("--b-lr", "0x")])
def test_a_bad_bridge_learning_rate_is_one_line(flag, value, tmp_path, capsys):
    from domix.cli import main

    assert main(["finetune", "--modules", "m", "--task", "t", "--out", str(tmp_path / "o"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag} must be a positive learning rate" in err and repr(value) in err


def test_matched_rates_train_as_the_identity_bridge():
    """The claim behind "matched": P = c·I with B at lr / c and P at lr · c trains (under Adam, up to its epsilon)
    like P = I with B scaled by c, B and P at lr; the reference is the formula in plain torch, not domix's layer."""
    torch.manual_seed(0)
    d_in, d_out, R, c, lr = 6, 5, 4, 1 / 4, 1e-2
    base = torch.nn.Linear(d_in, d_out).double().requires_grad_(False)
    A, B0, s = torch.randn(R, d_in).double(), torch.randn(d_out, R).double() * 0.1, torch.full((R,), 2.0).double()
    layer = BridgedLinear(base, A, B0, s, c, dtype=torch.float64)
    p_lr, b_lr = BridgeConfig(p_init=c, p_lr="matched", b_lr="matched").learning_rates(lr, R, 2)
    assert (p_lr, b_lr) == (pytest.approx(lr * c), pytest.approx(lr / c))
    ours = torch.optim.AdamW([{"params": [layer.bridge], "lr": p_lr}, {"params": [layer.lora_B], "lr": b_lr}], weight_decay=0.0)
    B_ref = (B0 * c).clone().requires_grad_(True)
    P_ref = torch.eye(R, dtype=torch.float64).requires_grad_(True)
    theirs = torch.optim.AdamW([B_ref, P_ref], lr=lr, weight_decay=0.0)
    x, target = torch.randn(16, d_in).double(), torch.randn(16, d_out).double()
    for _ in range(5):
        for opt, out in ((ours, layer(x)), (theirs, base(x) + ((x @ A.t() @ P_ref.t()) * s) @ B_ref.t())):
            opt.zero_grad()
            ((out - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(layer.lora_B @ layer.bridge, B_ref @ P_ref, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(layer.lora_B @ layer.bridge, B0 * c)  # it did train


def _layer_inputs(model, rows):
    """Each bridged layer's input on each row, run alone (no padding): the reference's view of the inputs."""
    seen = {name: [] for name in bridged_layers(model)}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen[name].append(args[0][0].detach()))
               for name, m in bridged_layers(model).items()]
    with torch.no_grad():
        for row in rows:
            model(torch.tensor([row]))
    for h in handles:
        h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}  # (tokens, d_in)


def test_input_weighted_usage_is_each_module_s_own_lora_output_at_the_identity_bridge(tiny_llama, llama_store):
    """At P = I, domain j's part of the update on x is what PEFT's LoRA layer of module j alone adds to x."""
    from peft import PeftModel

    from domix.methods.bridge.model import bridge_input_usage, update_maps

    rows = [list(range(3, 3 + n)) for n in (4, 9, 6, 12, 5)]  # lengths that pad in a batch of 4
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    compose(model, load_store(llama_store), BridgeConfig(p_init="identity"))
    maps = update_maps(model)
    usage = bridge_input_usage(model, {"trained": maps, "half": {k: v / 2 for k, v in maps.items()}}, rows, 0, 4, "cpu")
    inputs = _layer_inputs(model, rows)
    assert usage["tokens"] == sum(len(r) for r in rows) and usage["examples"] == len(rows)
    for domain in ("bio", "food"):
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64), llama_store / domain)
        lora = {n: m for n, m in peft.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
        for i, name in enumerate(bridged_layers(model)):
            layer = next(m for n, m in lora.items() if n.endswith(name))
            x = inputs[name]
            with torch.no_grad():
                added = layer(x) - layer.base_layer(x)  # PEFT's B_j A_j x alpha/r
            want = added.pow(2).sum(-1).mean().sqrt().item()
            j = [d for d, _ in bridged_layers(model)[name].blocks].index(domain)
            assert usage["norms"]["trained"][i][j] == pytest.approx(want, rel=1e-9)
            assert usage["norms"]["half"][i][j] == pytest.approx(want / 2, rel=1e-9)


def test_input_weighted_usage_follows_the_formula_by_hand_for_a_mixing_bridge(tiny_llama, llama_store):
    """A full P mixes the domains: domain j's part is (B_cat diag(s) P)[:, j-block] A_j x, pads left out."""
    from domix.methods.bridge.model import bridge_input_usage, update_maps

    rows = [list(range(5, 5 + n)) for n in (3, 11, 7)]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    compose(model, load_store(llama_store))
    torch.manual_seed(3)
    with torch.no_grad():
        for m in bridged_layers(model).values():
            m.bridge.add_(torch.randn_like(m.bridge) * 0.2)
            m.lora_B.add_(torch.randn_like(m.lora_B) * 0.1)
    usage = bridge_input_usage(model, {"end": update_maps(model)}, rows, 0, 8, "cpu")
    inputs = _layer_inputs(model, rows)
    for i, (name, m) in enumerate(bridged_layers(model).items()):
        x, start = inputs[name], 0
        for j, (_, rank) in enumerate(m.blocks):
            M_j = (m.lora_B @ torch.diag(m.scales) @ m.bridge)[:, start : start + rank]
            part = x @ m.lora_A[start : start + rank].t() @ M_j.t()
            assert usage["norms"]["end"][i][j] == pytest.approx(part.pow(2).sum(-1).mean().sqrt().item(), rel=1e-9)
            start += rank


def test_a_block_diagonal_bridge_acts_as_the_formula_with_cross_blocks_zero():
    """keep_blocks: y = W x + b + B diag(s) (P ⊙ M) A x, M block-diagonal over the modules' ranks, by hand with autograd;
    the cross-module entries of P get no gradient."""
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    A, B, s = torch.randn(5, 6), torch.randn(5, 5), torch.tensor([0.5, 0.5, 2.0, 2.0, 2.0])
    layer = BridgedLinear(base, A, B, s, p_scale=0.3)
    with torch.no_grad():
        layer.bridge.add_(torch.randn(5, 5))  # a full matrix first: keep_blocks zeroes its cross blocks
    layer.keep_blocks([2, 3])
    mask = torch.zeros(5, 5)
    mask[:2, :2], mask[2:, 2:] = 1, 1
    assert torch.equal(layer.bridge * (1 - mask), torch.zeros(5, 5)) and torch.equal(layer.P, layer.bridge)
    x = torch.randn(4, 6)
    P = layer.bridge.detach().clone().requires_grad_(True)
    expected = base(x) + ((x @ A.t() @ (P * mask).t()) * s) @ B.t()
    y = layer(x)
    assert torch.allclose(y, expected, atol=1e-6)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(layer.bridge.grad, P.grad, atol=1e-6) and torch.equal(layer.bridge.grad * (1 - mask), torch.zeros(5, 5))
    # the update: each module through its own block only, Σ_j B_j s_j P_jj A_j
    by_hand = sum(B[:, j] * s[j] @ (layer.bridge[j, j] @ A[j]) for j in (slice(0, 2), slice(2, 5)))
    assert torch.allclose(layer.delta_weight(), by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="do not add up"):
        layer.keep_blocks([2, 2])


def test_a_diagonal_bridge_trains_its_own_blocks_only_and_reloads_the_same(llama_store, task, tmp_path):
    """--p-blocks diagonal end to end: after training each layer's P is zero off its modules' blocks and moved on them;
    the record says so; the saved model reloads to the same predictions."""
    from domix.finetuning.config import FinetuneConfig
    from domix.finetuning.model import load_task_model
    from domix.finetuning.run import finetune, predict
    from domix.tasks import encode, read_split

    record = finetune(FinetuneConfig(modules=str(llama_store), task=str(task), out=str(tmp_path / "run"), p_blocks="diagonal",
                                     epochs=1, batch_size=16, lr=5e-3, max_length=32, dtype="float64"))
    assert record["bridge"]["p_blocks"] == "diagonal"
    model, tokenizer, _ = load_task_model(tmp_path / "run" / "model")
    ranks = [m.rank for m in sorted(load_store(llama_store), key=lambda m: m.name)]  # laid out by name
    for layer in bridged_layers(model).values():
        own = torch.zeros_like(layer.bridge, dtype=torch.bool)
        own[: ranks[0], : ranks[0]], own[ranks[0]:, ranks[0]:] = True, True
        assert torch.equal(layer.bridge[~own], torch.zeros_like(layer.bridge[~own]))  # no module writes through another's B
        c = 1 / sum(ranks)
        assert (layer.bridge[own] - torch.eye(sum(ranks), dtype=layer.bridge.dtype)[own] * c).abs().max() > 0  # it trained
    rows = encode(read_split(task / "test.jsonl", "test"), tokenizer, 32)
    logits = predict(model, rows, tokenizer.pad_token_id, 8, "cpu")
    test = record["test_predictions"]["predicted"]
    assert logits.argmax(-1).tolist() == test
