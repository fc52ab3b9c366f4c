import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from domix.methods.domix import BridgeConfig, BridgedLinear, compose, fold
from domix.methods.domix.layer import _BridgePath
from domix.methods.domix.model import bridged_layers
from domix.store import load_store, merge_into


def test_bridge_path_gradients_are_exact():
    torch.manual_seed(0)
    A, P, B = torch.randn(5, 7).double(), torch.randn(5, 5).double(), torch.randn(3, 5).double()
    s = torch.tensor([2.0, 2.0, 2.0, 0.5, 0.5]).double()
    x = torch.randn(2, 4, 7).double()
    for t in (x, P, B):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, P, B: _BridgePath.apply(x, A, P, B, s), (x, P, B))


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


def test_default_bridge_is_the_published_scaled_identity_and_folds_exactly(tiny_llama, llama_store):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    compose(model, load_store(llama_store))
    layer = next(iter(bridged_layers(model).values()))
    assert torch.equal(layer.bridge, torch.eye(6, dtype=torch.float64) / 6)
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
