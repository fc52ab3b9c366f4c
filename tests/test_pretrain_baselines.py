"""The pre-training baselines: NCL with one LoRA, joint LoRA, NCL of the whole model (docs/methods.md §4)."""

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from domix import atomic
from domix.cli import main
from domix.errors import DomixError
from domix.pretraining.config import PretrainConfig
from domix.pretraining.run import pretrain
from domix.store import check_base, load_store

AUTO = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM}


def config(model: Path, corpora: dict, out: Path, **kw) -> PretrainConfig:
    settings = {"steps": 30, "batch_size": 8, "seq_len": 32, "lr": 5e-3, "checkpoint_every": 10, "heldout_fraction": 0.1}
    settings.update(kw)
    return PretrainConfig(model=str(model), domains={k: str(v) for k, v in corpora.items()}, out=str(out), **settings)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


def assert_loss_fell_on_every_domain(manifest: dict) -> None:
    for name, h in manifest["heldout"]["domains"].items():
        assert h["loss_after"] < h["loss_before"] - 0.02, name


def assert_each_domain_learned_in_its_phase(manifest: dict) -> None:
    """NCL may forget an earlier domain later (that is what the baseline shows), but each phase learns its own."""
    for phase in manifest["phases"]:
        name = phase["domain"]
        assert phase["heldout_after"][name] < manifest["heldout"]["domains"][name]["loss_before"] - 0.02, name


def train_by_hand(model_path: Path, corpora: dict, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """One LoRA, domain after domain, each with its own optimizer: what ncl_lora should make."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from domix.base_model import load_base_model, load_tokenizer, resolve_target_modules
    from domix.corpus import read_corpus
    from domix.engine.loop import train_domain
    from domix.engine.data import DomainData

    tokenizer, objective = load_tokenizer(str(model_path))
    base = load_base_model(str(model_path), objective, torch.float32, tokenizer)
    target_modules, _ = resolve_target_modules(base.model, None)
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=target_modules, bias="none")
    model = get_peft_model(base.model, lora)
    for name, path in corpora.items():
        data = DomainData.build(read_corpus(name, path), tokenizer, objective, cfg)
        train_domain(model, name, data.train, objective, tokenizer, cfg, torch.device("cpu"), Path(cfg.out) / f"hand-{name}.pt")
    return get_peft_model_state_dict(model)


def test_ncl_lora_is_one_lora_trained_domain_after_domain(tiny_model, corpora, tmp_path):
    out = tmp_path / "ncl"
    seen = {}
    manifests = pretrain(config(tiny_model, corpora, out, method="ncl_lora", dropout=0.1),
                         on_step=lambda domain, step, loss, model: seen.setdefault("model", model))
    manifest = manifests["ncl"]
    assert list(manifests) == ["ncl"] and manifest["kind"] == "domix-sequential-module"
    assert manifest["order"] == ["food", "bio"] and [p["domain"] for p in manifest["phases"]] == ["food", "bio"]
    assert [p["steps"] for p in manifest["phases"]] == [30, 30] and manifest["training"]["steps"] == 60
    assert set(manifest["phases"][0]["heldout_after"]) == {"food", "bio"}  # every domain after every phase
    assert_each_domain_learned_in_its_phase(manifest)
    for key in ("wall_time_s", "train_time_s", "peak_memory_mb"):
        assert isinstance(manifest[key], float)

    (tmp_path / "hand").mkdir()
    by_hand = train_by_hand(tiny_model, corpora, config(tiny_model, corpora, tmp_path / "hand", dropout=0.1))
    saved = weights(out / "ncl")
    assert saved.keys() == by_hand.keys()
    assert all(torch.equal(saved[k], by_hand[k]) for k in saved)

    [module] = load_store(out, ["ncl"])
    assert module.rank == 8 and module.manifest["order"] == ["food", "bio"]
    check_base([module], manifest["base_model"]["fingerprint"])
    assert atomic.read_json(out / "run.json")["method"] == "ncl_lora"
    assert not (out / "checkpoints").exists()

    # the base under the LoRA was never changed
    fresh = AUTO[manifest["objective"]].from_pretrained(tiny_model).state_dict()
    trained_base = seen["model"].get_base_model().state_dict()
    assert fresh.keys() == trained_base.keys() and all(torch.equal(fresh[k], trained_base[k]) for k in fresh)


def test_ncl_lora_differs_from_the_last_domains_own_module(tiny_llama, corpora, tmp_path):
    ncl = pretrain(config(tiny_llama, corpora, tmp_path / "ncl", method="ncl_lora", steps=15))["ncl"]
    own = pretrain(config(tiny_llama, {"bio": corpora["bio"]}, tmp_path / "own", steps=15))
    assert atomic.read_json(tmp_path / "own" / "run.json")["method"] == "domix"
    a, b = weights(tmp_path / "ncl" / "ncl"), weights(tmp_path / "own" / "bio")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max() for k in a) > 1e-4
    # the same phase, but from food's weights: its 'before' is the base's, as the bio module's
    assert ncl["heldout"]["domains"]["bio"]["loss_before"] == pytest.approx(own["bio"]["heldout"]["loss_before"], rel=1e-6)


def test_joint_lora_takes_as_many_steps_as_the_domains_together(tiny_llama, corpora, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("\n".join(Path(corpora["bio"]).read_text().splitlines()[:90]) + "\n")
    domains = {"food": corpora["food"], "bio": small}
    out = tmp_path / "joint"
    manifest = pretrain(config(tiny_llama, domains, out, method="joint_lora", steps=None, epochs=1))["joint"]
    n_train = {n: c["tokens"] // 32 - manifest["heldout"]["domains"][n]["sequences"] for n, c in manifest["corpora"].items()}
    per_domain = {d: math.ceil(n / 8) for d, n in n_train.items()}
    assert n_train["food"] != n_train["bio"]
    assert manifest["training"]["steps_per_domain"] == per_domain
    assert manifest["training"]["steps"] == sum(per_domain.values()) == manifest["phases"][0]["steps"]
    assert manifest["kind"] == "domix-joint-module" and manifest["order"] == ["food", "bio"]
    assert_loss_fell_on_every_domain(manifest)
    [module] = load_store(out, ["joint"])
    assert module.manifest["method"] == "joint_lora"


def test_ncl_full_saves_a_whole_model_that_loads_without_domix(tiny_model, corpora, tmp_path):
    out = tmp_path / "full"
    ids = torch.randint(5, 30, (2, 12))
    trained = {}

    def capture(domain, step, loss, model):
        if domain == "bio" and step == 30:
            model.eval()
            with torch.no_grad():
                trained["logits"] = model(input_ids=ids).logits
            model.train()

    manifest = pretrain(config(tiny_model, corpora, out, method="ncl_full"), on_step=capture)["ncl-full"]
    folder = out / "ncl-full"
    assert manifest["kind"] == "domix-ncl-full-model" and manifest["order"] == ["food", "bio"]
    assert atomic.read_json(folder / "domix_model.json") == manifest and not (folder / "domix_manifest.json").exists()
    assert manifest["base_model"]["name"] == str(tiny_model)
    assert_each_domain_learned_in_its_phase(manifest)

    auto = AUTO[manifest["objective"]]
    loaded, base = auto.from_pretrained(folder).eval(), auto.from_pretrained(tiny_model)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, trained["logits"], atol=1e-6, rtol=0)
    a, b = loaded.state_dict(), base.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert any("embed" in k for k in changed) and any("layers.1." in k or "layer.1." in k for k in changed)
    head = loaded.get_output_embeddings().weight
    assert not torch.equal(head, base.get_output_embeddings().weight)  # the LM head trained too
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(folder)) == len(AutoTokenizer.from_pretrained(tiny_model))
    with pytest.raises(DomixError, match="holds no finished domain module"):
        load_store(out)  # a whole model is not a LoRA module


class Crash(Exception):
    pass


@pytest.mark.parametrize("method, crash_at, resumes_at", [
    ("ncl_lora", ("bio", 17), ("bio", 11)),  # in phase 2, after its checkpoint at step 10
    ("ncl_lora", ("bio", 5), ("bio", 1)),  # in phase 2, before any checkpoint of it
    ("ncl_full", ("bio", 17), ("bio", 11)),
    ("joint_lora", ("joint", 37), ("joint", 31)),
])
def test_interrupted_baseline_resumes_to_the_same_weights(tiny_llama, corpora, tmp_path, method, crash_at, resumes_at):
    settings = {"method": method, "steps": 25, "dropout": 0.1}
    reference = pretrain(config(tiny_llama, corpora, tmp_path / "reference", **settings))

    def crash(domain, step, loss, model):
        if (domain, step) == crash_at:
            raise Crash

    out = tmp_path / "interrupted"
    with pytest.raises(Crash):
        pretrain(config(tiny_llama, corpora, out, **settings), on_step=crash)
    [folder] = reference
    assert not (out / folder).exists()
    if method != "joint_lora":
        assert (out / "checkpoints" / f"{folder}-phases.pt").exists()  # food's phase is kept
    steps_seen = []
    resumed = pretrain(config(tiny_llama, corpora, out, **settings),
                       on_step=lambda domain, step, loss, model: steps_seen.append((domain, step)))
    last = 50 if method == "joint_lora" else 25  # joint: both domains' 25 steps
    assert steps_seen[0] == resumes_at and steps_seen[-1] == (crash_at[0], last)
    a, b = weights(tmp_path / "reference" / folder), weights(out / folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed[folder]["heldout"] == reference[folder]["heldout"]
    def exact(phases: list[dict]) -> list[tuple]:  # all but the times
        return [(p["domain"], p["steps"], p["tokens_seen"], p["loss_curve"], p["heldout_after"]) for p in phases]

    assert exact(resumed[folder]["phases"]) == exact(reference[folder]["phases"])
    assert not (out / "checkpoints").exists()
    assert atomic.read_json(out / "run.json")["status"] == "finished"


def test_finished_baseline_is_never_overwritten_silently(tiny_llama, corpora, tmp_path):
    out = tmp_path / "run"
    pretrain(config(tiny_llama, corpora, out, method="ncl_lora", steps=3))
    before = weights(out / "ncl")
    with pytest.raises(DomixError, match="holds a finished run; pass --overwrite"):
        pretrain(config(tiny_llama, corpora, out, method="ncl_lora", steps=3))
    assert all(torch.equal(before[k], weights(out / "ncl")[k]) for k in before)
    manifest = pretrain(config(tiny_llama, corpora, out, method="ncl_lora", steps=5), overwrite=True)["ncl"]
    assert [p["steps"] for p in manifest["phases"]] == [5, 5]


def test_unfinished_baseline_resumes_only_with_the_same_method(tiny_llama, corpora, tmp_path):
    out = tmp_path / "run"

    def crash(domain, step, loss, model):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        pretrain(config(tiny_llama, corpora, out, method="ncl_lora"), on_step=crash)
    with pytest.raises(DomixError, match=r"unfinished run with other settings \(method\)"):
        pretrain(config(tiny_llama, corpora, out, method="joint_lora"))


def test_bad_method_and_several_processes_are_refused(tiny_llama, corpora, tmp_path, monkeypatch):
    with pytest.raises(DomixError, match="unknown --method 'ncl'; choose one of domix, ncl_lora, joint_lora, ncl_full"):
        pretrain(config(tiny_llama, corpora, tmp_path / "a", method="ncl"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DomixError, match="runs in one process"):
        pretrain(config(tiny_llama, corpora, tmp_path / "b", method="ncl_full"))
    assert not (tmp_path / "b").exists()


def test_method_from_the_command_line_and_yaml(tiny_llama, corpora, tmp_path, capsys):
    from domix.settings import build_config

    cfg_file = tmp_path / "pretrain.yaml"
    cfg_file.write_text(f"model: {tiny_llama}\nout: {tmp_path / 'run'}\nmethod: ncl_full\nsteps: 3\nbatch-size: 4\nseq_len: 16\n"
                        f"domains:\n  food: {corpora['food']}\n  bio: {corpora['bio']}\n")
    assert build_config(PretrainConfig, str(cfg_file), {}).method == "ncl_full"
    assert main(["pretrain", "--config", str(cfg_file), "--method", "joint_lora", "--fused"]) == 0
    assert "held-out before" in capsys.readouterr().out
    assert atomic.read_json(tmp_path / "run" / "run.json")["method"] == "joint_lora"
    assert main(["modules", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.startswith("joint: LoRA rank 8")
