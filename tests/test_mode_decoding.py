"""MoDE in a generative model: each inner layer of a block gets its own layer's arguments (Gemma-2's
alternating sliding-window and global masks), and generation with the key/value cache equals generation
without it, token for token, greedy and beam, with experts unlike their backbone layers."""

import json

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from domix.methods.mode.config import plan_blocks
from domix.methods.mode.model import add_domain, expert_blocks, insert_blocks

VOCAB = 48


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "gemma2":  # layers alternate sliding-window (3 tokens) and global attention
        config = Gemma2Config(**common, sliding_window=3, layer_types=["sliding_attention", "full_attention"] * 2,
                              attn_implementation="eager")
        model = Gemma2ForCausalLM(config)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.to(torch.float64).eval()


def ids(seed: int = 0, batch: int = 2, length: int = 11) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def with_experts(model: torch.nn.Module, domains=("bio", "law"), perturb: float = 0.0, block_size: int = 4,
                 expert_layers: int | None = None) -> torch.nn.Module:
    insert_blocks(model, plan_blocks(4, block_size=block_size, expert_layers=expert_layers))
    for domain in domains:
        add_domain(model, domain)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for block in expert_blocks(model):
            for p in block.experts.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
            if perturb:  # a gate that differs per token and gives every branch a share
                block.gate.weight.copy_(0.5 * torch.randn(block.gate.weight.shape, generator=g, dtype=block.gate.weight.dtype))
    return model


@pytest.mark.parametrize("kind", ["gemma2", "llama"])
@pytest.mark.parametrize("block_size", [4, 2])
def test_experts_at_init_give_the_base_models_logits(kind, block_size):
    """The backbone's copies under an even gate are the base model, if every inner layer gets its own
    mask: on Gemma-2 a block that handed its first layer's (sliding-window) mask to the global layers
    would attend to fewer tokens there and change the logits."""
    base = tiny(kind)
    x = ids(length=12)
    expected = base(input_ids=x, use_cache=False).logits
    model = with_experts(tiny(kind), block_size=block_size)
    for block in expert_blocks(model):
        assert not block.gate.weight.any() and not block.gate.bias.any()  # an even three-way gate
    torch.testing.assert_close(model(input_ids=x, use_cache=False).logits, expected, rtol=0, atol=1e-10)
    if kind == "gemma2":  # the test can fail: one mask for every layer changes the result
        wrong = tiny(kind)
        wrong.config.layer_types = ["sliding_attention"] * 4
        assert not torch.allclose(wrong(input_ids=x, use_cache=False).logits, expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["gemma2", "llama"])
@pytest.mark.parametrize("block_size, expert_layers", [(4, None), (4, 1), (2, None), (2, 1)])
def test_cached_generation_equals_uncached_token_for_token(kind, block_size, expert_layers):
    model = with_experts(tiny(kind, seed=1), perturb=0.2, block_size=block_size, expert_layers=expert_layers)
    indices = sorted(i for b in expert_blocks(model) for layers in b.experts.values() for layer in layers
                     for i in [layer.self_attn.layer_idx])
    assert indices == list(range(4, 4 + len(indices)))  # after the backbone's 4 layers, one entry each
    prompt = ids(seed=3, length=6)
    settings = dict(max_new_tokens=10, min_new_tokens=10, pad_token_id=0)
    greedy = {c: model.generate(prompt, do_sample=False, use_cache=c, **settings) for c in (True, False)}
    assert torch.equal(greedy[True], greedy[False])
    beams = {c: model.generate(prompt, do_sample=False, num_beams=3, use_cache=c, **settings) for c in (True, False)}
    assert torch.equal(beams[True], beams[False])
    # the experts matter here: without them the model generates otherwise
    plain = tiny(kind, seed=1)
    assert not torch.equal(plain.generate(prompt, do_sample=False, use_cache=True, **settings), greedy[True])


def test_a_cache_the_experts_do_not_fit_is_refused():
    from transformers import DynamicCache

    from domix.errors import DomixError

    model = with_experts(tiny("llama"), perturb=0.1)
    cache = DynamicCache(config=model.config)
    cache.layers.pop()  # one layer short of the backbone's
    with pytest.raises(DomixError, match="generate with a cache the model builds"):
        model(input_ids=ids(), use_cache=True, cache=cache)


# --- instruction tuning, reloading and serving ------------------------------------------------------------

def test_instruct_with_mode_trains_the_gates_saves_reloads_and_generates(tiny_llama, corpora, tmp_path, capsys, monkeypatch):
    import domix.methods.mode.method as mode_method
    from domix.cli import main
    from domix.llm.model import load_causal_task_model

    placed = []
    real_place = mode_method.place
    monkeypatch.setattr(mode_method, "place", lambda model, device_map: (placed.append(device_map), real_place(model, device_map)))

    from test_llm import instruction_data

    store = tmp_path / "store"
    assert main(["pretrain", "--method", "mode", "--model", str(tiny_llama), "--domain", f"food={corpora['food']}",
                 "--domain", f"bio={corpora['bio']}", "--out", str(store), "--steps", "4", "--batch-size", "4",
                 "--seq-len", "16", "--mode-block-size", "1"]) == 0
    train, dev = instruction_data(tmp_path / "train.jsonl", 48, 0), instruction_data(tmp_path / "dev.jsonl", 12, 1)
    run = tmp_path / "run"
    assert main(["instruct", "--method", "mode", "--modules", str(store), "--train", str(train), "--dev", str(dev),
                 "--out", str(run), "--template", "plain", "--epochs", "2", "--batch-size", "8", "--lr", "5e-2",
                 "--max-length", "32", "--dtype", "float64", "--mode-device-map", "experts=cpu"]) == 0
    assert placed == [{"experts": "cpu"}]  # the experts placed as the map says, as finetune places them
    record = json.loads((run / "result.json").read_text())
    assert record["method"] == "mode" and record["mode"]["domains"] == ["bio", "food"] and record["gate_weights"] is None
    gates = 2 * 3 * (32 + 1)  # two blocks of one layer, a three-way gate over 32 features each
    assert record["trainable_parameters"] == gates  # only the gates: the experts stay frozen by default
    assert record["dev_loss"] < record["dev_loss_before"]
    # reloaded from the base alone, the same model: gates and experts as trained
    model, tokenizer, saved = load_causal_task_model(run / "model")
    assert saved["mode"] == record["mode"]
    ids = torch.tensor([[5, 9, 12, 7, 3]])
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=False).logits[0, -1]
    blocks = expert_blocks(model)
    assert len(blocks) == 2 and all(set(b.experts) == {"bio", "food"} for b in blocks)
    assert any(b.gate.weight.abs().sum() > 0 for b in blocks)  # trained, not the start
    # served: domix generate decodes it with the cache, and gives what uncached greedy decoding gives
    capsys.readouterr()
    assert main(["generate", str(run / "model"), "pizza wine", "--max-new-tokens", "6"]) == 0
    served = capsys.readouterr().out
    prompt = tokenizer("pizza wine", return_tensors="pt").input_ids
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(cached, uncached) and served.strip()
    assert torch.isfinite(whole).all()


def test_instruct_with_mode_refuses_lora_adapters_and_names_the_store(tmp_path, capsys):
    from domix.cli import main

    from test_errors import run_cli

    line = run_cli(["instruct", "--method", "mode", "--train", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o")], capsys)
    assert "composes the domain experts of domix pretrain --method mode" in line
    line = run_cli(["instruct", "--method", "mode", "--modules", str(tmp_path), "--adapter", str(tmp_path / "a"),
                    "--train", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o")], capsys)
    assert "--adapter gives LoRA adapters, which MoDE does not compose" in line


def test_slots_answer_the_attention_type_of_the_layer_they_hold():
    """transformers 4.x's Gemma-2 and Qwen2 loops pick each layer's mask by ``decoder_layer.attention_type``."""
    from domix.base_model import find_blocks

    model = tiny("gemma2")
    _, layers = find_blocks(model)
    for i, layer in enumerate(layers):
        layer.attention_type = model.config.layer_types[i]
    with_experts(model, block_size=4)
    assert [slot.attention_type for slot in model.model.layers] == model.config.layer_types
