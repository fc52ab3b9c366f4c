"""MixDA: layer choice, the adapter layers, both stage-1 losses, fused = separate, resume, the gate,
the stage-1 and stage-2 round trips, the CLI and the comparison."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from domix import atomic
from domix.batches import lm_batch
from domix.cli import main
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.finetuning.evaluate import evaluate_file
from domix.finetuning.model import classification_model, export, load_task_model, load_tokenizer_for
from domix.finetuning.run import finetune, predict
from domix.methods.mixda.config import choose_layers, default_layers, parse_layers
from domix.methods.mixda.layer import BottleneckAdapter, DomainAdapterLinear, Gate, MaskContext, Segments, combine_gates
from domix.methods.mixda.model import adapter_sites, build_mixda, install_domain_adapters, load_adapters, mixture_layers, new_adapters
from domix.methods.mixda.pretrain import retention_terms
from domix.pretraining.config import PretrainConfig
from domix.engine.loop import batch_rows, step_seed
from domix.pretraining.run import pretrain
from domix.tasks import encode, read_split

from conftest import make_corpus, make_tiny_model

AUTO = {"bert": AutoModelForMaskedLM, "llama": AutoModelForCausalLM}


def pcfg(model, domains: dict, out, general, **kw) -> PretrainConfig:
    settings = dict(method="mixda", steps=10, batch_size=8, seq_len=32, lr=1e-2, heldout_max_blocks=4, checkpoint_every=5,
                    mixda_layers=[0, 1])  # both blocks of the tiny models (the default is one of two)
    settings.update(kw)
    return PretrainConfig(model=str(model), domains={k: str(v) for k, v in domains.items()}, out=str(out),
                          general=str(general), **settings)


def fcfg(store, task, out, **kw) -> FinetuneConfig:
    settings = dict(method="mixda", epochs=3, batch_size=16, lr=1e-2, max_length=32)
    settings.update(kw)
    return FinetuneConfig(modules=str(store), task=str(task), out=str(out), **settings)


def kind(model_path) -> str:
    return "bert" if "bert" in str(model_path) else "llama"


@pytest.fixture(scope="session")
def general(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("general") / "general.txt", 150, seed=3)


@pytest.fixture(scope="session")
def mixda_store(tmp_path_factory, tiny_llama, corpora, general) -> Path:
    out = tmp_path_factory.mktemp("mixda-store") / "store"
    pretrain(pcfg(tiny_llama, corpora, out, general))
    return out


def random_up(adapters: list[BottleneckAdapter], seed: int = 0, std: float = 0.3) -> None:
    """Give zero-initialised Up projections values, so an adapter does something."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for a in adapters:
            a.up.weight.normal_(0, std)
            a.up.bias.normal_(0, std)


# ---- layer choice --------------------------------------------------------------------------------

def test_default_layers_are_the_references_relative_depth():
    assert default_layers(24) == [7, 11]  # the published runs: blocks 7 and 11 of RoBERTa-large
    assert default_layers(30) == [9, 14]  # SmolLM2-135M
    assert default_layers(12) == [4, 6] and default_layers(2) == [1] and default_layers(1) == [0]
    assert choose_layers(12, [11, 3]) == [3, 11]
    with pytest.raises(DomixError, match=r"--mixda-layers \[2\] do not exist: this model has 2 blocks"):
        choose_layers(2, [0, 2])
    assert parse_layers("7, 11") == [7, 11]
    with pytest.raises(DomixError, match="comma-separated block indices"):
        parse_layers("seven")
    assert PretrainConfig(model="m", domains={"a": "x"}, out="o", method="mixda", general="g", mixda_layers="1").validate().method_options.mixda_layers == [1]
    with pytest.raises(DomixError, match="distinct block indices"):
        PretrainConfig(model="m", domains={"a": "x"}, out="o", method="mixda", general="g", mixda_layers=[1, 1]).validate()
    with pytest.raises(DomixError, match="needs general-domain text .* pass --general PATH"):
        PretrainConfig(model="m", domains={"a": "x"}, out="o", method="mixda").validate()


def test_adapters_sit_at_the_ffn_output_projection(tiny_model):
    model = AUTO[kind(tiny_model)].from_pretrained(tiny_model)
    path = "bert.encoder.layer.{}.output.dense" if kind(tiny_model) == "bert" else "model.layers.{}.mlp.down_proj"
    assert [s.name for s in adapter_sites(model, None)] == [path.format(1)]  # the default for 2 blocks
    sites = adapter_sites(model, [0, 1])
    assert [s.name for s in sites] == [path.format(0), path.format(1)]
    assert all(s.linear is model.get_submodule(s.name) and (s.linear.in_features, s.linear.out_features) == (64, 32) for s in sites)
    adapters, gates = new_adapters(sites, 16, seed=0, dtype=torch.float32)
    adapter, gate = adapters[0], gates[0]
    assert adapter.down.weight.shape == (4, 64) and adapter.up.weight.shape == (32, 4)  # d_ff -> d_ff/16 -> d_model
    assert not adapter.up.weight.any() and not adapter.up.bias.any()  # zero-initialised Up
    assert gate.net[0].weight.shape == (4, 64) and gate.net[2].weight.shape == (2, 4)  # a two-way gate
    assert torch.equal(gate(torch.randn(3, 1, 64)), torch.full((3, 1, 2), 0.5))  # starting even


# ---- stage-1 layer and losses --------------------------------------------------------------------

def random_gates(n: int, d: int = 64, width: int = 4, seed: int = 1) -> list[Gate]:
    torch.manual_seed(seed)
    return [Gate(d, width, 2, torch.float64) for _ in range(n)]  # default init: not even


@pytest.mark.parametrize("causal", [False, True])
def test_domain_adapter_layer_gates_each_domains_adapter_on_its_own_rows_and_records_a_real_mse(causal):
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 32, dtype=torch.float64)
    adapters = [BottleneckAdapter(64, 32, 4, torch.float64) for _ in range(2)]
    random_up(adapters)
    gates = random_gates(2)
    segments = Segments()
    layer = DomainAdapterLinear(base, adapters, gates, segments, MaskContext(causal))
    h = torch.randn(5, 7, 64, dtype=torch.float64)
    assert torch.equal(layer(h), base(h))  # no rows assigned: the plain W2 h
    segments.spans = [(1, 0, 2), (0, 2, 5)]
    segments.retention = {0: [], 1: []}
    out = layer(h)
    up = lambda a, x: a.up(torch.nn.functional.gelu(a.down(x)))  # noqa: E731

    def by_hand(k, x):  # the published stage-1 layer: softmax(gate(pooled h)) over (DA_k(h), W2 h)
        pooled = x.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None] if causal else x.mean(1, keepdim=True)
        net = gates[k].net
        g = torch.softmax(net[2](torch.nn.functional.gelu(net[0](pooled))), -1)
        return g[..., :1] * up(adapters[k], x) + g[..., 1:] * base(x)

    assert torch.allclose(out[:2], by_hand(1, h[:2]), atol=1e-12, rtol=0)
    assert torch.allclose(out[2:], by_hand(0, h[2:]), atol=1e-12, rtol=0)
    # the retention term compares the adapted output with the plain one, per domain, on its rows
    for k, rows in ((1, slice(0, 2)), (0, slice(2, 5))):
        (mse,) = segments.retention[k]
        assert mse.item() == pytest.approx(((out[rows] - base(h[rows])) ** 2).mean().item(), rel=1e-10)
        assert mse.item() > 1e-3


def halved_ffn(model_path, layers=(0, 1)):
    """The base with W2 of the adapted blocks halved: what stage 1 starts as (zero adapter, even gate)."""
    model = AUTO[kind(model_path)].from_pretrained(model_path, dtype=torch.float64)
    with torch.no_grad():
        for site in adapter_sites(model, list(layers)):
            site.linear.weight.mul_(0.5)
            if site.linear.bias is not None:
                site.linear.bias.mul_(0.5)
    return model


def test_stage1_starts_as_the_base_with_half_of_each_adapted_ffn_output(tiny_model):
    model = AUTO[kind(tiny_model)].from_pretrained(tiny_model, dtype=torch.float64).eval()
    ids = torch.randint(5, 30, (3, 10))
    with torch.no_grad():
        sites = adapter_sites(model, [0, 1])
        segments, _ = install_domain_adapters(model, sites, [new_adapters(sites, 16, 0, torch.float64)], causal=kind(tiny_model) == "llama")
        segments.only(0)
        assert torch.allclose(model(ids).logits, halved_ffn(tiny_model).eval()(ids).logits, atol=1e-10, rtol=0)


def test_lm_term_is_half_the_models_own_loss_at_the_first_step(tiny_model, corpora, general, tmp_path):
    """At step 1 the adapters are zero and the gates even, so the model is the base with half of each adapted
    FFN output and the loss is 0.5 x that model's LM loss on the domain's first batch (masked or causal, with
    the same masks and dropout)."""
    seen = []
    cfg = pcfg(tiny_model, {"food": corpora["food"]}, tmp_path / "run", general, steps=1, dtype="float64")
    manifest = pretrain(cfg, on_step=lambda d, s, loss, m: seen.append(loss))["food"]
    from domix.corpus import read_corpus, split_heldout, tokenize_blocks
    from domix.base_model import load_tokenizer

    tokenizer, objective = load_tokenizer(str(tiny_model))
    blocks = tokenize_blocks(read_corpus("food", corpora["food"]), tokenizer, 32, append_eos=objective == "clm")
    train, _ = split_heldout(blocks, cfg.heldout_fraction, cfg.heldout_max_blocks, cfg.seed, "food")
    batch = lm_batch(train[batch_rows(len(train), 8, cfg.seed, 0)], objective, tokenizer,
                     torch.Generator().manual_seed(step_seed(cfg.seed, 0)), cfg.mlm_probability)
    model = halved_ffn(tiny_model).train()
    torch.manual_seed(step_seed(cfg.seed, 0))  # the base's dropout, as the run draws it
    with torch.no_grad():
        expected = model(**batch).loss.item()
    retention = manifest["training"]["retention_curve"][0][1]  # MSE(W2 h / 2, W2 h), rounded in the curve
    assert manifest["training"]["lm_loss_curve"][0][1] == pytest.approx(expected, abs=1e-5)  # both take float32 logits
    assert seen[0] == pytest.approx(0.5 * expected + retention, abs=1e-4)


def test_retention_term_is_the_mse_to_the_plain_ffn_and_training_on_it_lowers_it(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    for p in model.parameters():
        p.requires_grad_(False)
    sites = adapter_sites(model, [0, 1])
    adapters, gates = new_adapters(sites, 16, 0, torch.float64)
    random_up(adapters, std=0.05)
    segments, layers = install_domain_adapters(model, sites, [(adapters, gates)], causal=True)
    seen = []  # each adapted block's output and its plain W2 h, from the layer's own input
    hooks = [layer.register_forward_hook(lambda mod, args, out: seen.append((out, mod.base_layer(args[0])))) for layer in layers]
    ids = torch.randint(3, 30, (4, 16))
    (term,) = retention_terms(model, segments, ids, [(0, 0, 4)])
    expected = sum(((out - plain) ** 2).mean() for out, plain in seen) / len(seen)
    assert term.item() > 1e-4 and term.item() == pytest.approx(expected.item(), rel=1e-10)
    for hook in hooks:
        hook.remove()
    optimizer = torch.optim.Adam([p for a in (*adapters, *gates) for p in a.parameters()], lr=1e-2)
    start = term.item()
    for _ in range(30):
        (term,) = retention_terms(model, segments, ids, [(0, 0, 4)])
        term.backward()
        optimizer.step()
        optimizer.zero_grad()
    (term,) = retention_terms(model, segments, ids, [(0, 0, 4)])
    assert term.item() < 0.2 * start


def test_pretrain_writes_adapters_with_a_live_retention_term(mixda_store, tiny_llama, corpora):
    run = atomic.read_json(mixda_store / "run.json")
    assert run["status"] == "finished" and run["method"] == "mixda" and run["layers"] == [0, 1]
    for name in corpora:
        manifest = atomic.read_json(mixda_store / name / "domix_manifest.json")
        assert manifest["kind"] == "domix-mixda-adapter" and manifest["mixda"]["layers"] == [0, 1]
        assert manifest["mixda"]["adapter"] == 4 and manifest["training"]["fused_with"] == ["food", "bio"]
        assert manifest["heldout"]["loss_after"] < manifest["heldout"]["loss_before"]
        assert manifest["peak_memory_mb"] > 0 and manifest["train_time_s"] > 0 and manifest["versions"]["torch"]
        retention = [v for _, v in manifest["training"]["retention_curve"]]
        assert all(v > 0 for v in retention)  # half the FFN output at first, then the adapters move it
        tensors = load_file(str(mixda_store / name / "mixda_adapter.safetensors"))
        assert sorted(tensors) == sorted(f"{i}.{p}.{w}" for i in (0, 1) for p in ("down", "up", "gate.net.0", "gate.net.2")
                                         for w in ("weight", "bias"))
        assert tensors["1.up.weight"].abs().max() > 0  # trained
    assert not (mixda_store / "checkpoints").exists()


# ---- fused training and resuming -----------------------------------------------------------------

def adapters_of(out: Path, domain: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / domain / "mixda_adapter.safetensors"))


def test_fused_training_makes_the_adapters_of_separate_runs(tiny_llama, corpora, general, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("\n".join(Path(corpora["bio"]).read_text().splitlines()[:90]) + "\n")
    domains = {"food": corpora["food"], "bio": small}
    settings = dict(steps=None, epochs=2, dtype="float64")
    fused = pretrain(pcfg(tiny_llama, domains, tmp_path / "fused", general, **settings))
    separate = pretrain(pcfg(tiny_llama, domains, tmp_path / "separate", general, fused=False, **settings))
    assert fused["food"]["training"]["steps"] != fused["bio"]["training"]["steps"]  # one finishes first
    for domain in domains:
        assert fused[domain]["training"]["steps"] == separate[domain]["training"]["steps"]
        a, b = adapters_of(tmp_path / "fused", domain), adapters_of(tmp_path / "separate", domain)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-6, atol=1e-9), (domain, key)
        assert fused[domain]["heldout"]["loss_after"] == pytest.approx(separate[domain]["heldout"]["loss_after"], rel=1e-6)


class Crash(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_adapters(tiny_llama, corpora, general, tmp_path):
    reference = pretrain(pcfg(tiny_llama, corpora, tmp_path / "reference", general, steps=12))

    def crash(domain, step, loss, model):
        if domain == "bio" and step == 8:  # after the checkpoint at step 5
            raise Crash

    out = tmp_path / "run"
    with pytest.raises(Crash):
        pretrain(pcfg(tiny_llama, corpora, out, general, steps=12), on_step=crash)
    assert (out / "checkpoints" / "mixda-fused.pt").exists() and not (out / "food").exists()
    with pytest.raises(DomixError, match=r"unfinished run with other settings \(mixda_reduction\)"):
        pretrain(pcfg(tiny_llama, corpora, out, general, steps=12, mixda_reduction=8))
    steps = []
    resumed = pretrain(pcfg(tiny_llama, corpora, out, general, steps=12), on_step=lambda d, s, l, m: steps.append(s))
    assert steps[0] == 6 and steps[-1] == 12
    for domain in corpora:
        a, b = adapters_of(tmp_path / "reference", domain), adapters_of(out, domain)
        assert all(torch.equal(a[k], b[k]) for k in a), domain
        assert resumed[domain]["training"]["loss_curve"] == reference[domain]["training"]["loss_curve"]
        assert resumed[domain]["heldout"] == reference[domain]["heldout"]


def test_bad_pretraining_input_is_refused(tiny_llama, corpora, general, tmp_path):
    with pytest.raises(DomixError, match="general-domain corpus .* does not exist"):
        pretrain(pcfg(tiny_llama, corpora, tmp_path / "a", tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DomixError, match="corpus of domain 'general' .* has no text"):
        pretrain(pcfg(tiny_llama, corpora, tmp_path / "b", tmp_path / "empty.txt"))
    with pytest.raises(DomixError, match=r"--mixda-layers \[5\] do not exist"):
        pretrain(pcfg(tiny_llama, corpora, tmp_path / "c", general, mixda_layers=[5]))


# ---- stage 2: the gate, the task adapter, round trips --------------------------------------------

def test_stage1_adapters_load_into_stage2_exactly(mixda_store, tiny_llama, corpora):
    model, head = classification_model(str(tiny_llama), ["a", "b", "c"], torch.float64, seed=0)
    adapters = load_adapters(mixda_store, ["bio", "food"])
    groups = build_mixda(model, head, adapters, fcfg(mixda_store, "t", "o"))
    layers = mixture_layers(model)
    assert len(layers) == 2
    for i, layer in layers.items():
        assert len(layer.adapters) == 2 and layer.gate.net[2].out_features == 3  # bio, food, the FFN
        stored_gates = []
        for domain in ["bio", "food"]:
            gate = Gate(64, 4, 2, torch.float64)
            gate.load_state_dict({k.removeprefix(f"{i}.gate."): v.double() for k, v in adapters_of(mixda_store, domain).items()
                                  if k.startswith(f"{i}.gate.")})
            stored_gates.append(gate)
        pooled = torch.randn(3, 5, 64, dtype=torch.float64)
        g, one, two = layer.gate(pooled), stored_gates[0](pooled), stored_gates[1](pooled)
        # each domain's odds against the FFN are its stage-1 gate's
        assert torch.allclose(g[..., 0] / g[..., 2], one[..., 0] / one[..., 1], rtol=1e-10, atol=0)
        assert torch.allclose(g[..., 1] / g[..., 2], two[..., 0] / two[..., 1], rtol=1e-10, atol=0)
        for k, domain in enumerate(["bio", "food"]):
            stored = adapters_of(mixda_store, domain)
            for key, value in layer.adapters[k].state_dict().items():
                assert value.dtype == torch.float64 and torch.equal(value.float(), stored[f"{i}.{key}"]), (domain, key)
    trainable = {id(p) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if p.requires_grad} == {n for n, p in named.items() if id(p) in trainable}
    assert all(".gate." in n or ".task_adapter." in n or n in head for n, p in named.items() if p.requires_grad)
    with pytest.raises(DomixError, match=r"has no domain \['law'\] \(MixDA domain adapters\)"):
        load_adapters(mixda_store, ["law"])


@pytest.mark.parametrize("which", ["llama", "bert"])
def test_stage2_starts_as_the_stage1_model_of_a_domain_composed_alone(which, tiny_llama, tiny_bert, corpora, general, mixda_store, tmp_path):
    """With one domain, stage 2 at initialisation is that domain's stage-1 model: the published layer
    softmax(gate(pooled h)) . (DA(h), W2 h), computed here by hand from the stored tensors."""
    import torch.nn.functional as F

    base, causal = (tiny_llama, True) if which == "llama" else (tiny_bert, False)
    store = mixda_store if which == "llama" else tmp_path / "store"
    if which == "bert":
        pretrain(pcfg(tiny_bert, corpora, store, general, steps=4))
    t = {k: v.double() for k, v in adapters_of(store, "food").items()}

    class ByHand(torch.nn.Module):
        def __init__(self, w2, i):
            super().__init__()
            self.w2, self.i = w2, i

        def forward(self, h):
            lin = lambda x, name: F.linear(x, t[f"{self.i}.{name}.weight"], t[f"{self.i}.{name}.bias"])  # noqa: E731
            n = torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]
            pooled = h.cumsum(1) / n if causal else h.mean(1, keepdim=True)
            g = torch.softmax(lin(F.gelu(lin(pooled, "gate.net.0")), "gate.net.2"), -1)
            return g[..., :1] * lin(F.gelu(lin(h, "down")), "up") + g[..., 1:] * self.w2(h)

    reference, _ = classification_model(str(base), ["a", "b", "c"], torch.float64, seed=0)
    for site in adapter_sites(reference, [0, 1]):
        reference.get_submodule(site.name.rsplit(".", 1)[0]).__setattr__(site.name.rsplit(".", 1)[1], ByHand(site.linear, site.index))
    model, head = classification_model(str(base), ["a", "b", "c"], torch.float64, seed=0)
    build_mixda(model, head, load_adapters(store, ["food"]), fcfg(store, "t", "o"))
    ids = torch.randint(5, 30, (3, 9))
    with torch.no_grad():
        want = reference.base_model(input_ids=ids).last_hidden_state
        got = model.base_model(input_ids=ids).last_hidden_state
        plain, _ = classification_model(str(base), ["a", "b", "c"], torch.float64, seed=0)
        assert not torch.allclose(want, plain.base_model(input_ids=ids).last_hidden_state, atol=1e-3)  # the adapters act
    assert torch.allclose(got, want, atol=1e-10, rtol=0)


def stage2_model(model_path, store, seed: int = 0):
    """A float64 stage-2 model with gates and task adapters that are not at their initial values."""
    model, head = classification_model(str(model_path), ["a", "b", "c"], torch.float64, seed=0)
    tokenizer = load_tokenizer_for(str(model_path), model)
    build_mixda(model, head, load_adapters(store), fcfg(store, "t", "o"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in mixture_layers(model).values():
            for p in (*layer.gate.parameters(), *layer.task_adapter.parameters()):
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval(), tokenizer


def test_gate_mixes_adapters_and_ffn_by_a_softmax_over_the_real_tokens_a_position_sees(mixda_store, tiny_llama):
    model, tokenizer = stage2_model(tiny_llama, mixda_store)
    layer = mixture_layers(model)[1]
    h = torch.randn(2, 6, 64, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    layer.context.mask = mask
    with torch.no_grad():
        g = layer.gate(layer.context.pooled(h))
        # a decoder's position t reads the mean of the real tokens up to t (padding left out)
        real = mask[..., None].double()
        pooled = (h * real).cumsum(1) / real.cumsum(1).clamp_min(1)
        assert torch.allclose(pooled[0, 3], h[0, :4].mean(0)) and torch.allclose(pooled[0, 5], h[0, :4].mean(0))
        assert torch.allclose(g, torch.softmax(layer.gate.net(pooled), -1), atol=1e-12, rtol=0)
        assert torch.allclose(g.sum(-1), torch.ones(2, 6, dtype=torch.float64)) and (g > 0).all()
        parts = [a(h) for a in layer.adapters] + [layer.base_layer(h)]
        mixed = sum(g[..., k : k + 1] * part for k, part in enumerate(parts))
        assert torch.allclose(layer(h), mixed + layer.task_adapter(mixed), atol=1e-12, rtol=0)


@pytest.mark.parametrize("which", ["llama", "bert"])
def test_padding_does_not_move_an_examples_prediction(which, tiny_llama, tiny_bert, corpora, general, mixda_store, tmp_path):
    """The gate pools over the backbone's attention mask, captured whoever calls the backbone."""
    base = tiny_llama if which == "llama" else tiny_bert
    store = mixda_store if which == "llama" else tmp_path / "store"
    if which == "bert":
        pretrain(pcfg(tiny_bert, corpora, store, general, steps=4))
    model, tokenizer = stage2_model(base, store)
    short, long = tokenizer(["the food wine", "the food wine table price menu pasta pizza staff"])["input_ids"]
    from domix.tasks import pad_batch

    with torch.no_grad():
        alone = model(**pad_batch([short], tokenizer.pad_token_id)).logits[0]
        padded = model(**pad_batch([short, long], tokenizer.pad_token_id)).logits[0]
    assert torch.allclose(alone, padded, atol=1e-10, rtol=0)


def test_finetune_trains_gates_task_adapters_and_head_and_records_gate_weights(mixda_store, tiny_llama, task, tmp_path):
    record = finetune(fcfg(mixda_store, task, tmp_path / "run", epochs=4, dtype="float64"))
    assert record["test"]["accuracy"] > 0.6  # chance is 1/3
    assert record["method"] == "mixda" and record["bridge_usage"] is None
    assert record["layers"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert record["mixda"] == {"domains": ["bio", "food"], "layers": [0, 1], "reduction": 16, "task_reduction": 16, "gate": "stage1",
                               "stage1_gate_width": 4, "gate_width": 8, "pooling": "causal"}
    gates = record["gate_weights"]
    assert gates["layers"] == record["layers"] and gates["labels"] == ["bio", "food", "ffn"]
    for row in gates["weights"]:
        assert len(row) == 3 and sum(row) == pytest.approx(1.0, abs=1e-12) and all(0 < w < 1 for w in row)
    tensors = load_file(str(tmp_path / "run" / "model" / "task_model.safetensors"))
    trained = sum(v.numel() for k, v in tensors.items() if ".gate." in k or ".task_adapter." in k)
    assert record["trainable_parameters"] == trained + sum(tensors[k].numel() for k in record["head"])
    # the frozen domain adapters are the stored ones, untouched by fine-tuning
    for i, layer in enumerate(record["layers"]):
        for k, domain in enumerate(["bio", "food"]):
            stored = adapters_of(mixda_store, domain)
            assert torch.equal(tensors[f"{layer}.adapters.{k}.down.weight"].float(), stored[f"{i}.down.weight"])
            assert torch.equal(tensors[f"{layer}.adapters.{k}.up.weight"].float(), stored[f"{i}.up.weight"])


def test_task_model_reloads_exactly_and_refuses_export(mixda_store, tiny_llama, task, tmp_path):
    finetune(fcfg(mixda_store, task, tmp_path / "run", epochs=1, dtype="float64"))
    folder = tmp_path / "run" / "model"
    model, tokenizer, record = load_task_model(folder)
    rows = encode(read_split(task / "test.jsonl", "test"), tokenizer, 32)
    reloaded = predict(model, rows, tokenizer.pad_token_id, 8, "cpu")
    again, _, _ = load_task_model(folder)
    assert torch.equal(predict(again, rows, tokenizer.pad_token_id, 8, "cpu"), reloaded)
    assert evaluate_file(folder, task / "test.jsonl") == pytest.approx(record["test"], abs=1e-12)  # the kept model's scores
    # the stage-2 model the run trained, rebuilt by hand from the saved weights: the same logits
    rebuilt, _ = classification_model(str(tiny_llama), record["labels"], torch.float64, seed=0)
    build_mixda(rebuilt, record["head"], load_adapters(mixda_store), fcfg(mixda_store, task, "o"))
    tensors = load_file(str(folder / "task_model.safetensors"))
    named = dict(rebuilt.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            named[key].copy_(value)
    assert torch.equal(predict(rebuilt.eval(), rows, tokenizer.pad_token_id, 8, "cpu"), reloaded)
    with pytest.raises(DomixError, match="cannot be exported as a plain transformers model"):
        export(folder, tmp_path / "exported")
    # the backbone stays a language model: under the base's LM head it runs, and the mixture changes it
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64).eval()
    plain = lm(torch.tensor([[3, 4, 5, 6]])).logits
    lm.model = model.base_model
    assert not torch.allclose(lm(torch.tensor([[3, 4, 5, 6]])).logits, plain)


def test_adapters_of_another_base_or_method_are_refused(mixda_store, llama_store, task, tmp_path):
    other = make_tiny_model(tmp_path / "other-llama", "llama", seed=1)
    with pytest.raises(DomixError, match="trained on another base model"):
        finetune(fcfg(mixda_store, task, tmp_path / "a", model=str(other)))
    with pytest.raises(DomixError, match=r"holds \['domix-domain-module'\], not MixDA domain adapters"):
        finetune(fcfg(llama_store, task, tmp_path / "b"))
    with pytest.raises(DomixError, match="method mixda needs the domain adapters"):
        FinetuneConfig(task=str(task), out=str(tmp_path / "c"), method="mixda", model=str(other)).validate()


# ---- command line and comparison ----------------------------------------------------------------

def test_command_line(tiny_llama, corpora, general, task, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["pretrain", "--method", "mixda", "--model", str(tiny_llama), "--domain", f"food={corpora['food']}",
                 "--general", str(general), "--mixda-layers", "1", "--mixda-reduction", "8", "--steps", "3",
                 "--batch-size", "4", "--seq-len", "16", "--out", str(store)]) == 0
    manifest = atomic.read_json(store / "food" / "domix_manifest.json")
    assert manifest["mixda"]["layers"] == [1] and manifest["mixda"]["adapter"] == 8
    assert main(["finetune", "--method", "mixda", "--modules", str(store), "--task", str(task), "--epochs", "1",
                 "--max-length", "16", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["gate_weights"]["labels"] == ["food", "ffn"]
    assert main(["pretrain", "--method", "mixda", "--model", str(tiny_llama), "--domain", f"food={corpora['food']}",
                 "--out", str(tmp_path / "x")]) == 2
    assert "pass --general PATH" in capsys.readouterr().err


def test_compare_runs_mixda(tiny_llama, corpora, general, task, tmp_path):
    from domix.comparison.config import CompareConfig
    from domix.comparison.run import compare

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_llama), "out": str(tmp_path / "out"), "general": str(general),
        "domains": {name: str(p) for name, p in corpora.items()},
        "tasks": {"topics": {"path": str(task), "domain": "food"}},
        "methods": ["mixda"], "seeds": [1], "orders": 1,
        "pretrain": {"steps": 4, "batch_size": 8, "seq_len": 32, "lr": 5e-3, "heldout_max_blocks": 4},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 5e-3, "max_length": 32},
    }))
    results = compare(CompareConfig.from_yaml(config), in_process=True)
    (run,) = results["runs"]
    assert run["method"] == "mixda" and run["gate_weights"]["labels"] == ["bio", "food", "ffn"]  # the store's, sorted
    (pre,) = results["pretraining"]
    assert pre["name"] == "pretrain/mixda" and pre["peak_memory_mb"] > 0
    assert (tmp_path / "out" / "report.md").is_file()


def test_modules_command_lists_the_adapters(mixda_store, capsys):
    from domix.cli import main

    assert main(["modules", str(mixda_store)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listing] == ["bio", "food"]
    assert all("MixDA adapters at blocks [0, 1], bottleneck 4" in line and "held-out loss" in line for line in listing)


def test_combined_gates_keep_each_stage1_gates_odds_and_equal_it_alone():
    gates = random_gates(2)
    x = torch.randn(4, 3, 64, dtype=torch.float64)
    assert torch.allclose(combine_gates(gates[:1])(x), gates[0](x), atol=1e-12, rtol=0)  # one domain: the same gate
    g = combine_gates(gates)(x)
    for k, gate in enumerate(gates):
        own = gate(x)
        assert torch.allclose(g[..., k] / g[..., 2], own[..., 0] / own[..., 1], rtol=1e-10, atol=0)
