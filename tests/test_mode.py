"""MoDE (domix.methods.mode): the gated block, both stages, placement, round trips, and its place in domix compare."""

import copy
import inspect
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from domix.base_model import find_blocks, weights_fingerprint
from domix.cli import main
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.finetuning.model import export, load_task_model
from domix.finetuning.run import finetune, predict
from domix.methods.mode.config import plan_blocks
from domix.methods.mode.layer import BlockSlot, ExpertBlock
from domix.methods.mode.model import (
    EXPERTS_FILE, add_domain, expert_blocks, gate_weights, init_stage1_gates, insert_blocks, place, recording_gates,
    remove_blocks,
)
from domix.pretraining.config import PretrainConfig
from domix.pretraining.run import pretrain
from domix.settings import build_config
from domix.tasks import encode, read_split

from conftest import make_tiny_model

AUTO = {"bert": AutoModelForMaskedLM, "llama": AutoModelForCausalLM}


def kind_of(path) -> str:
    return "bert" if "bert" in str(path) else "llama"


def lm(path, dtype=torch.float64):
    return AUTO[kind_of(path)].from_pretrained(path, dtype=dtype).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding: the mask must reach every branch
    return ids, mask


def pretrain_cfg(model, corpora, out, **kw) -> PretrainConfig:
    settings = dict(method="mode", steps=12, batch_size=8, seq_len=32, lr=5e-3, checkpoint_every=4, heldout_fraction=0.1,
                    mode_block_size=1, mode_expert_layers=1)
    settings.update(kw)
    return PretrainConfig(model=str(model), domains={k: str(v) for k, v in corpora.items()}, out=str(out), **settings)


def finetune_cfg(store, task, out, **kw) -> FinetuneConfig:
    settings = dict(method="mode", epochs=2, batch_size=16, lr=5e-3, max_length=32, dtype="float64")
    settings.update(kw)
    return FinetuneConfig(modules=str(store), task=str(task), out=str(out), **settings)


# --- the block ----------------------------------------------------------------------------------------

def capture(model, slots, ids, mask):
    """(input of the first layer slot, output of the last) of one forward."""
    seen = {}
    hooks = [slots[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
             slots[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("y", out[0] if isinstance(out, tuple) else out))]
    model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    return seen["x"], seen["y"]


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_block_output_is_the_per_token_softmax_mix_of_backbone_and_expert(kind, tiny_bert, tiny_llama):
    base = lm(tiny_bert if kind == "bert" else tiny_llama)
    ids, mask = batch()
    _, slots = find_blocks(base)
    x, h_backbone = capture(base, slots, ids, mask)

    mixed = copy.deepcopy(base)
    _, mixed_slots = find_blocks(mixed)
    (block,) = insert_blocks(mixed, plan_blocks(2, block_size=2, expert_layers=2))  # one block of both layers
    add_domain(mixed, "bio")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in block.experts["bio"].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        block.gate.weight.copy_(0.5 * torch.randn(block.gate.weight.shape, generator=g, dtype=torch.float64))
        block.gate.bias.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    # the expert alone: the base with the expert's weights in its layers
    expert_model = copy.deepcopy(base)
    _, expert_slots = find_blocks(expert_model)
    for layer, trained in zip(expert_slots, block.experts["bio"]):
        layer.load_state_dict(trained.state_dict())
    _, h_expert = capture(expert_model, expert_slots, ids, mask)
    x_mixed, y = capture(mixed, mixed_slots, ids, mask)
    assert torch.equal(x_mixed, x)
    a = torch.softmax(block.gate(x), dim=-1)
    expected = a[..., :1] * h_backbone + a[..., 1:] * h_expert
    assert not torch.allclose(h_expert, h_backbone, atol=1e-3)  # the two branches differ, so the mix is tested
    assert a[..., 0].std() > 0.01  # per token, not one weight for all
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_expert_layers_keep_their_own_cache_entries(tiny_llama):
    """Expert copies would keep their backbone layer's index and so write a second set of keys into that
    layer's entry of the model's key/value cache: they are renumbered after the model's layers, and the
    cache gets an entry for each (whatever the layer loop's keyword for the cache)."""
    from transformers import DynamicCache

    base = lm(tiny_llama)
    ids, mask = batch()
    insert_blocks(base, plan_blocks(2, block_size=1, expert_layers=1))
    add_domain(base, "bio")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an expert unlike its backbone layer, and a gate that uses both
        for block in expert_blocks(base):
            for p in block.experts["bio"].parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            block.gate.bias.copy_(torch.tensor([0.2, -0.1], dtype=torch.float64))
    uncached = base(input_ids=ids, attention_mask=mask, use_cache=False).logits
    cache = DynamicCache(config=base.config)
    keyword = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    out = base(input_ids=ids, attention_mask=mask, use_cache=True, **{keyword: cache})
    torch.testing.assert_close(out.logits, uncached, rtol=0, atol=1e-12)
    assert len(cache.layers) == 4  # the backbone's two, one per expert copy
    assert [cache.get_seq_length(layer) for layer in range(4)] == [ids.shape[1]] * 4
    assert [b.experts["bio"][0].self_attn.layer_idx for b in expert_blocks(base)] == [2, 3]
    assert [b.backbone[0].self_attn.layer_idx for b in expert_blocks(base)] == [0, 1]


def test_full_copy_experts_start_as_the_backbone_and_removal_restores_it(tiny_model):
    base = lm(tiny_model)
    ids, mask = batch()
    expected = base(input_ids=ids, attention_mask=mask).logits
    keys = list(base.state_dict())
    _, layers = find_blocks(base)
    originals = list(layers)
    blocks = insert_blocks(base, plan_blocks(2, block_size=1, expert_layers=1))
    add_domain(base, "food")
    add_domain(base, "bio")
    assert [type(m) for m in layers] == [ExpertBlock, ExpertBlock] and blocks[0].labels == ["backbone", "food", "bio"]
    with torch.no_grad():  # any gate: every branch computes the same function at the start
        for block in blocks:
            block.gate.bias.copy_(torch.tensor([0.1, 1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(base(input_ids=ids, attention_mask=mask).logits, expected, rtol=0, atol=1e-10)
    remove_blocks(base)
    assert list(layers) == originals and list(base.state_dict()) == keys
    assert torch.equal(base(input_ids=ids, attention_mask=mask).logits, expected)


def test_blocks_cut_the_layers_and_experts_copy_the_last_ones(tiny_llama):
    plans = plan_blocks(30)  # the defaults, for SmolLM2's 30 layers: whole-block copies
    assert [p.source_layers for p in plans] == [tuple(range(b, b + 6)) for b in range(0, 30, 6)]
    plans = plan_blocks(30, block_size=6, expert_layers=1)  # the cheaper expert: the block's last layer
    assert [p.source_layers for p in plans] == [(5,), (11,), (17,), (23,), (29,)]
    plans = plan_blocks(7, block_size=3, expert_layers=2, blocks=[2, 0])
    assert [(p.index, p.layers, p.source_layers) for p in plans] == [(0, (0, 1, 2), (1, 2)), (2, (6,), (6,))]
    for bad, match in [(dict(block_size=0), "block-size"), (dict(block_size=2, expert_layers=3), "expert-layers"),
                       (dict(blocks=[5]), r"blocks \[5\] do not exist"), (dict(blocks=[1, 1]), "distinct")]:
        with pytest.raises(DomixError, match=match):
            plan_blocks(7, **{"block_size": 3, **bad})

    base = lm(tiny_llama)
    _, layers = find_blocks(base)
    (block,) = insert_blocks(base, plan_blocks(2, block_size=2, expert_layers=1))
    add_domain(base, "bio")
    assert isinstance(layers[1], BlockSlot) and len(block.experts["bio"]) == 1
    for (name, p), q in zip(block.experts["bio"][0].named_parameters(), block.backbone[1].parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name  # a copy of layer 1, not layer 1 itself
    assert block.gate.weight.shape == (2, 32) and not block.gate.weight.any()  # a two-way gate from zero
    init_stage1_gates(base, 0.99)  # stage 1 starts near the backbone, whatever the token
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    torch.testing.assert_close(torch.softmax(block.gate(x), -1), torch.tensor([0.99, 0.01], dtype=torch.float64).expand(2, 5, 2))


def test_gate_weights_count_only_real_tokens(tiny_llama):
    base = lm(tiny_llama)
    blocks = insert_blocks(base, plan_blocks(2, block_size=2, expert_layers=1))
    add_domain(base, "food")
    with torch.no_grad():
        blocks[0].gate.weight.normal_(generator=torch.Generator().manual_seed(0))
    ids, mask = batch()
    seen = {}
    blocks[0].gate.register_forward_hook(lambda m, args, out: seen.__setitem__("p", torch.softmax(out, -1)))
    with recording_gates(base) as recorded:
        base(input_ids=ids, attention_mask=mask)
    real = seen["p"][mask.bool()].mean(0).tolist()
    weights = gate_weights(recorded)
    assert weights["labels"] == ["food", "backbone"] and weights["layers"] == ["layers 0-1"]
    assert weights["weights"][0] == pytest.approx([real[1], real[0]], abs=1e-6)
    assert seen["p"].mean((0, 1)).tolist() != pytest.approx(real, abs=1e-6)  # the padding would have changed it


# --- placement ----------------------------------------------------------------------------------------

def test_device_map_puts_experts_where_it_says_and_a_cpu_map_changes_nothing(tiny_llama):
    base = lm(tiny_llama)
    insert_blocks(base, plan_blocks(2, block_size=1, expert_layers=1))
    add_domain(base, "food")
    add_domain(base, "bio")
    with torch.no_grad():
        for block in expert_blocks(base):
            for p in block.experts.parameters():
                p.mul_(1.1)
            block.gate.bias.copy_(torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64))
    ids, mask = batch()
    expected = base(input_ids=ids, attention_mask=mask).logits
    placed = copy.deepcopy(base)
    place(placed, {"backbone": "cpu", "experts": "cpu", "bio": "cpu"})
    assert torch.equal(placed(input_ids=ids, attention_mask=mask).logits, expected)

    place(placed, {"experts": "meta", "food": "cpu"})
    for block in expert_blocks(placed):
        assert {p.device.type for p in block.experts["bio"].parameters()} == {"meta"}
        assert {p.device.type for p in block.experts["food"].parameters()} == {"cpu"}
        assert block.gate.weight.device.type == "cpu" and {p.device.type for p in block.backbone.parameters()} == {"cpu"}
    with pytest.raises(DomixError, match=r"names \['law'\]"):
        place(placed, {"law": "cpu"})
    with pytest.raises(DomixError, match="unknown device"):
        place(placed, {"experts": "gpu7"})


# --- stage 1 ------------------------------------------------------------------------------------------

def test_stage1_trains_only_experts_and_gates_and_writes_the_store(tiny_model, corpora, tmp_path):
    out = tmp_path / "store"
    models = []
    manifests = pretrain(pretrain_cfg(tiny_model, corpora, out, steps=30), on_step=lambda d, s, loss, m: models.append(m))
    fresh = lm(tiny_model, torch.float32)
    for name, m in manifests.items():
        assert m["kind"] == "domix-mode-experts" and m["base_model"]["fingerprint"] == weights_fingerprint(fresh)
        assert m["heldout"]["loss_after"] < m["heldout"]["loss_before"] - 0.02, name
        assert m["mode"]["blocks"] == [{"index": 0, "layers": [0], "source_layers": [0]}, {"index": 1, "layers": [1], "source_layers": [1]}]
        assert m["training"]["steps"] == 30 and m["peak_memory_mb"] > 0 and m["train_time_s"] > 0
        tensors = load_file(str(out / name / EXPERTS_FILE))
        _, layers = find_blocks(fresh)
        for b in (0, 1):
            trained = {k.removeprefix(f"blocks.{b}.expert.0."): v for k, v in tensors.items() if k.startswith(f"blocks.{b}.expert.")}
            source = layers[b].state_dict()
            assert trained.keys() == source.keys() and any(not torch.equal(trained[k], source[k]) for k in source)
            assert tensors[f"blocks.{b}.gate.weight"].shape == (2, 32) and tensors[f"blocks.{b}.gate.weight"].any()
    # the backbone is untouched and has its own layers back
    trained_base = models[-1]
    assert not expert_blocks(trained_base)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in trained_base.state_dict().items())
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["method"] == "mode"


def test_interrupted_stage1_resumes_to_the_same_experts(tiny_llama, corpora, tmp_path):
    pretrain(pretrain_cfg(tiny_llama, corpora, tmp_path / "whole"))

    def stop(domain, step, loss, model):
        if domain == "bio" and step == 6:
            raise KeyboardInterrupt

    cfg = pretrain_cfg(tiny_llama, corpora, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, on_step=stop)
    assert (tmp_path / "cut" / "food" / EXPERTS_FILE).is_file() and (tmp_path / "cut" / "checkpoints" / "bio.pt").is_file()
    pretrain(cfg)
    for name in corpora:
        a, b = load_file(str(tmp_path / "whole" / name / EXPERTS_FILE)), load_file(str(tmp_path / "cut" / name / EXPERTS_FILE))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not (tmp_path / "cut" / "checkpoints" / "bio.pt").exists()
    with pytest.raises(DomixError, match="holds a finished run"):
        pretrain(cfg)


# --- stage 2 ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mode_stores(tmp_path_factory, tiny_bert, tiny_llama, corpora):
    root = tmp_path_factory.mktemp("mode-stores")
    for path in (tiny_bert, tiny_llama):
        pretrain(pretrain_cfg(path, corpora, root / kind_of(path), steps=8, dtype="float64"))
    return {"bert": root / "bert", "llama": root / "llama"}


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_stage2_trains_gates_and_head_records_gates_and_reloads_exactly(kind, mode_stores, task, tmp_path):
    store = mode_stores[kind]
    models = []
    record = finetune(finetune_cfg(store, task, tmp_path / "run", lr=2e-2, epochs=3), on_step=lambda t, s, loss, m: models.append(m))
    model = models[-1]  # holds the kept epoch's weights after finetune returns
    gates = record["gate_weights"]
    assert gates["labels"] == ["bio", "food", "backbone"] and gates["layers"] == ["layers 0-0", "layers 1-1"] == record["layers"]
    for row in gates["weights"]:
        assert sum(row) == pytest.approx(1.0, abs=1e-5) and row != pytest.approx([1 / 3] * 3, abs=1e-4)  # the gates moved
    blocks = expert_blocks(model)
    gate_params = sum(p.numel() for b in blocks for p in b.gate.parameters())
    assert gate_params == 2 * 3 * 33
    head = sum(p.numel() for n, p in model.named_parameters() if n in record["head"])
    assert record["trainable_parameters"] == gate_params + head  # experts and backbone frozen
    stored = {d: load_file(str(store / d / EXPERTS_FILE)) for d in ("bio", "food")}
    for block in blocks:
        for domain, layers in block.experts.items():
            for k, v in layers.state_dict().items():
                assert torch.equal(v, stored[domain][f"blocks.{block.plan.index}.expert.{k}"])
    if kind == "llama":  # the tiny BERT learns slower, through its freshly initialised pooler
        assert record["test"]["accuracy"] > 0.5  # chance is 1/3

    reloaded, tokenizer, saved = load_task_model(tmp_path / "run" / "model")
    assert saved["gate_weights"] == gates
    rows = encode(read_split(task / "test.jsonl", "test"), tokenizer, 32)
    torch.testing.assert_close(predict(reloaded, rows, tokenizer.pad_token_id, 8, "cpu"),
                               predict(model, rows, tokenizer.pad_token_id, 8, "cpu"), rtol=0, atol=1e-10)
    with pytest.raises(DomixError, match="MoDE task model cannot be exported"):
        export(tmp_path / "run" / "model", tmp_path / "exported")


def test_stage2_gates_start_from_the_stage1_gates(mode_stores, tiny_llama):
    from types import SimpleNamespace

    from domix.finetuning.model import classification_model
    from domix.methods.mode.config import ModeFinetuneSettings
    from domix.methods.mode.model import build_task_model, load_expert_store

    experts = load_expert_store(mode_stores["llama"])
    model, head = classification_model(str(tiny_llama), ["a", "b", "c"], torch.float64, seed=0)
    build_task_model(model, head, experts, SimpleNamespace(method_options=ModeFinetuneSettings(), lr=1e-3, weight_decay=0.0))
    x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for block in expert_blocks(model):
        a = torch.softmax(block.gate(x), -1)
        for j, e in enumerate(experts, start=1):
            w, bias = e.tensors[f"blocks.{block.plan.index}.gate.weight"], e.tensors[f"blocks.{block.plan.index}.gate.bias"]
            stage1 = torch.softmax(x @ w.T + bias, -1)
            assert not torch.allclose(stage1[..., 1] / stage1[..., 0], stage1[0, 0, 1] / stage1[0, 0, 0])  # per token
            torch.testing.assert_close(a[..., j] / a[..., 0], stage1[..., 1] / stage1[..., 0] / len(experts))


def test_stage2_option_trains_the_experts(mode_stores, task, tmp_path):
    store = mode_stores["llama"]
    models = []
    record = finetune(finetune_cfg(store, task, tmp_path / "run", epochs=1, mode_train_experts=True, mode_gate_lr=5e-2,
                                   domains=["food"]), on_step=lambda t, s, loss, m: models.append(m))
    blocks = expert_blocks(models[-1])
    assert record["gate_weights"]["labels"] == ["food", "backbone"] and record["mode"]["gate_lr"] == 5e-2
    experts = sum(p.numel() for b in blocks for p in b.experts.parameters())
    gates = sum(p.numel() for b in blocks for p in b.gate.parameters())
    assert record["trainable_parameters"] > experts + gates
    stored = load_file(str(store / "food" / EXPERTS_FILE))
    assert any(not torch.equal(v, stored[f"blocks.{b.plan.index}.expert.{k}"])
               for b in blocks for k, v in b.experts["food"].state_dict().items())


def test_task_model_backbone_works_as_a_language_model(mode_stores, tiny_llama, task, tmp_path):
    models = []
    finetune(finetune_cfg(mode_stores["llama"], task, tmp_path / "run", epochs=1, save_model=False),
             on_step=lambda t, s, loss, m: models.append(m))
    head = lm(tiny_llama)
    head.model = models[-1].model  # what retention does: the task backbone under the base's LM head
    ids, _ = batch()
    out = head(input_ids=ids, labels=ids, use_cache=True)
    assert torch.isfinite(out.loss)
    # a cached continuation, one token at a time, gives the logits of the whole sequence at once
    keyword = "cache" if "cache" in inspect.signature(head.forward).parameters else "past_key_values"
    with torch.no_grad():
        whole = head(input_ids=ids, use_cache=False).logits
        prefix = head(input_ids=ids[:, :-2], use_cache=True)
        cache = getattr(prefix, keyword, None) or prefix.past_key_values
        step = head(input_ids=ids[:, -2:-1], use_cache=True, **{keyword: cache})
        last = head(input_ids=ids[:, -1:], use_cache=True, **{keyword: cache})
    torch.testing.assert_close(step.logits[:, -1], whole[:, -2], rtol=0, atol=1e-10)
    torch.testing.assert_close(last.logits[:, -1], whole[:, -1], rtol=0, atol=1e-10)


def test_stage2_refuses_experts_of_another_base_and_a_missing_store(mode_stores, task, tmp_path):
    other = make_tiny_model(tmp_path / "other", "llama", seed=5)
    with pytest.raises(DomixError, match="trained on another base model"):
        finetune(finetune_cfg(mode_stores["llama"], task, tmp_path / "a", model=str(other)))
    with pytest.raises(DomixError, match="needs the domain experts"):
        FinetuneConfig(method="mode", model=str(other), task=str(task), out=str(tmp_path / "b")).validate()
    with pytest.raises(DomixError, match="is a setting of method mode; --method lora does not read it"):
        build_config(FinetuneConfig, None, dict(method="lora", model=str(other), task=str(task), out=str(tmp_path / "b"), mode_gate_lr=1e-3))
    with pytest.raises(DomixError, match="has no domain"):
        finetune(finetune_cfg(mode_stores["llama"], task, tmp_path / "c", domains=["law"]))


def test_stage2_refuses_a_lora_store(llama_store, task, tmp_path):
    with pytest.raises(DomixError, match="not MoDE experts"):
        finetune(finetune_cfg(llama_store, task, tmp_path / "run"))


# --- command line and comparison ----------------------------------------------------------------------

def test_command_line_runs_both_stages(tiny_llama, corpora, task, tmp_path, capsys):
    store = tmp_path / "store"
    args = ["pretrain", "--method", "mode", "--model", str(tiny_llama), "--domain", f"food={corpora['food']}",
            "--out", str(store), "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--mode-block-size", "1",
            "--mode-blocks", "1", "--mode-device-map", "experts=cpu"]
    assert main(args) == 0
    manifest = json.loads((store / "food" / "domix_manifest.json").read_text())
    assert manifest["mode"]["blocks"] == [{"index": 1, "layers": [1], "source_layers": [1]}]
    assert manifest["mode"]["device_map"] == {"experts": "cpu"}
    assert main(["finetune", "--method", "mode", "--modules", str(store), "--task", str(task), "--out", str(tmp_path / "ft"),
                 "--epochs", "1", "--max-length", "16", "--mode-train-experts", "--mode-gate-lr", "0.01"]) == 0
    record = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert record["mode"]["train_experts"] is True and record["gate_weights"]["layers"] == ["layers 1-1"]
    capsys.readouterr()
    bad = args[:-6] + ["--mode-block-size", "2", "--mode-expert-layers", "3", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "--mode-expert-layers must be between 1 and the block size 2" in capsys.readouterr().err
    assert main(args[:-2] + ["--mode-device-map", "experts", "--out", str(tmp_path / "bad2")]) == 2
    assert "NAME=DEVICE" in capsys.readouterr().err


def test_compare_runs_mode(tmp_path, tiny_llama, corpora, task):
    from test_compare import write_config

    from domix.comparison.config import CompareConfig
    from domix.comparison.run import compare

    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["mode"],
                          pretrain={"steps": 4, "batch_size": 8, "seq_len": 32, "lr": 5e-3, "heldout_max_blocks": 4,
                                    "mode_block_size": 1})
    results = compare(CompareConfig.from_yaml(config), in_process=True)
    (run,) = results["runs"]
    assert run["method"] == "mode" and run["gate_weights"]["labels"] == ["bio", "food", "backbone"]
    assert len(run["gate_weights"]["weights"]) == 2
    (pre,) = results["pretraining"]
    assert pre["name"] == "pretrain/mode" and pre["peak_memory_mb"] > 0
    assert (tmp_path / "out" / "report.md").is_file()


def test_modules_command_lists_the_experts(mode_stores, capsys):
    from domix.cli import main

    assert main(["modules", str(mode_stores["llama"])]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listing] == ["bio", "food"]
    assert all("MoDE experts beside the blocks of layers 0-0, 1-1, 1 layer(s) each" in line and "8 steps" in line for line in listing)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_default_whole_block_experts_start_as_the_backbone_with_even_gates(kind, tiny_bert, tiny_llama, corpora, tmp_path):
    """The paper's expert (a copy of its block) makes the stage-1 model the base at any gate weights: it starts even."""
    from domix.methods.mode.config import backbone_prior_of
    from domix.methods.mode.model import init_stage1_gates

    base = lm(tiny_bert if kind == "bert" else tiny_llama)
    ids, mask = batch()
    expected = base(input_ids=ids, attention_mask=mask).logits
    cfg = PretrainConfig(model="m", domains={"a": "x"}, out="o", method="mode").validate().method_options
    (block,) = insert_blocks(base, plan_blocks(2, cfg.mode_block_size, cfg.mode_expert_layers, cfg.mode_blocks))
    add_domain(base, "bio")
    init_stage1_gates(base, backbone_prior_of(cfg.mode_block_size, cfg.mode_expert_layers, cfg.mode_backbone_prior))
    assert len(block.experts["bio"]) == 2 and block.plan.source_layers == (0, 1)  # the whole (2-layer) block
    weights = torch.softmax(block.gate(torch.randn(2, 3, 32, dtype=torch.float64)), -1)
    assert torch.allclose(weights, torch.full_like(weights, 0.5))
    torch.testing.assert_close(base(input_ids=ids, attention_mask=mask).logits, expected, rtol=0, atol=1e-12)
    assert backbone_prior_of(6, 1, None) == 0.99 and backbone_prior_of(6, None, 0.7) == 0.7
    manifest = pretrain(pretrain_cfg(tiny_llama, {"food": corpora["food"]}, tmp_path / "store", steps=2,
                                     mode_block_size=2, mode_expert_layers=None))["food"]
    assert manifest["mode"]["expert_layers"] == 2 and manifest["mode"]["backbone_prior"] == 0.5


def test_stage2_gates_train_on_a_mixture_of_tasks_each_scored_on_its_own_labels(tiny_llama, corpora, task, tmp_path):
    """--mix-task: MoDE's stage 2 on mixed target data. One head over both tasks' labels, each example's loss on its
    own task's labels (checked by hand), every task scored, and the saved model the run's own task's."""
    import torch.nn.functional as F

    from conftest import make_task
    from domix.finetuning.mixture import Mixture
    from domix.tasks import read_task

    other = make_task(tmp_path / "other", seed=5, sizes=(48, 16, 16))
    for split in ("train", "dev", "test"):  # another label set: the topics renamed
        path = other / f"{split}.jsonl"
        path.write_text(path.read_text().replace('"food"', '"x"').replace('"bio"', '"y"').replace('"cs"', '"z"'))
    mixture = Mixture([read_task(task), read_task(other)])
    assert mixture.labels == ["bio", "cs", "food", "other:x", "other:y", "other:z"] and mixture.spans == [(0, 3), (3, 6)]
    logits = torch.randn(4, 6, dtype=torch.float64)
    owner, labels = torch.tensor([0, 1, 1, 0]), torch.tensor([2, 3, 5, 0])
    by_hand = torch.stack([F.cross_entropy(logits[i, s:e][None], (labels[i] - s)[None]) for i, (s, e) in
                           enumerate(mixture.spans[k] for k in owner.tolist())]).mean()
    assert torch.allclose(F.cross_entropy(logits + mixture.mask(owner, logits.dtype), labels), by_hand, rtol=1e-12, atol=0)

    store = tmp_path / "store"
    pretrain(pretrain_cfg(tiny_llama, corpora, store, steps=4))
    record = finetune(finetune_cfg(store, task, tmp_path / "run", mix_tasks=[str(other)], epochs=1))
    assert record["steps"] == -(-(96 + 48) // 16)  # both tasks' examples, shuffled together
    assert record["labels"] == ["bio", "cs", "food"] and set(record["mixture"]["test"]) == {"other"}
    assert set(record["mixture"]["dev"]) == {"other"} and 0 <= record["mixture"]["test"]["other"]["macro_f1"] <= 1
    model, tokenizer, saved = load_task_model(tmp_path / "run" / "model")
    assert model.config.num_labels == 3  # the run's own task's rows of the joint head
    rows = encode(read_split(task / "test.jsonl", "test"), tokenizer, 32)
    predicted = predict(model, rows, tokenizer.pad_token_id, 8, "cpu").argmax(-1)
    gold = read_task(task).label_ids("test")
    assert (predicted == gold).double().mean().item() == pytest.approx(record["test"]["accuracy"])
