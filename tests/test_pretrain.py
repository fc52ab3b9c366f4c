import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from domix import atomic
from domix.cli import main
from domix.errors import DomixError
from domix.pretraining.config import PretrainConfig
from domix.engine.loop import batch_rows
from domix.pretraining.run import pretrain
from domix.store import load_module, load_store, merge_into

AUTO = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM}


def config(model: Path, corpora: dict, out: Path, **kw) -> PretrainConfig:
    settings = dict(steps=30, batch_size=8, seq_len=32, lr=5e-3, checkpoint_every=10, heldout_fraction=0.1)
    settings.update(kw)
    return PretrainConfig(model=str(model), domains={k: str(v) for k, v in corpora.items()}, out=str(out), **settings)


def adapter(out: Path, domain: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / domain / "adapter_model.safetensors"))


def test_loss_falls_and_the_base_stays_bit_identical(tiny_model, corpora, tmp_path):
    cfg = config(tiny_model, corpora, tmp_path / "run", steps=40)
    manifests = pretrain(cfg)
    for name, m in manifests.items():
        assert m["heldout"]["loss_after"] < m["heldout"]["loss_before"] - 0.02, name
        n_train = m["corpus"]["tokens"] // 32 - m["heldout"]["sequences"]
        rows = sum(len(batch_rows(n_train, 8, cfg.seed, step)) for step in range(40))
        assert m["training"]["steps"] == 40 and m["training"]["tokens_seen"] == rows * 32
        curve = m["training"]["loss_curve"]
        assert curve[-1][1] < curve[0][1]
    # the base on disk and the base after training hold the same weights
    objective = manifests["food"]["objective"]
    fresh = AUTO[objective].from_pretrained(tiny_model)
    from domix.base_model import weights_fingerprint

    assert manifests["food"]["base_model"]["fingerprint"] == weights_fingerprint(fresh)


def test_training_does_not_touch_base_weights(tiny_llama, corpora, tmp_path):
    from peft import LoraConfig, get_peft_model

    from domix.base_model import load_base_model
    from domix.engine.loop import train_domain

    base = load_base_model(str(tiny_llama))
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    blocks = torch.randint(3, 30, (16, 16))
    train_domain(model, "x", blocks, "clm", base.tokenizer, PretrainConfig(steps=5, batch_size=4, lr=1e-2), torch.device("cpu"), tmp_path / "c.pt")
    after = model.unload().state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_store_is_plain_peft_and_loaders_agree(tiny_model, corpora, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    manifests = pretrain(config(tiny_model, corpora, out, steps=15))
    objective = manifests["food"]["objective"]
    ids = torch.randint(5, 30, (2, 12))
    for domain in corpora:
        peft_model = PeftModel.from_pretrained(AUTO[objective].from_pretrained(tiny_model), out / domain).eval()
        merged = merge_into(AUTO[objective].from_pretrained(tiny_model), load_module(out / domain)).eval()
        plain = AUTO[objective].from_pretrained(tiny_model).eval()
        with torch.no_grad():
            a, b, c = peft_model(ids).logits, merged(ids).logits, plain(ids).logits
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
        assert (a - c).abs().max() > 1e-3  # the module changes the model
    manifest = atomic.read_json(out / "food" / "domix_manifest.json")
    for key in ("name", "corpus", "base_model", "training", "heldout", "wall_time_s", "peak_memory_mb", "versions"):
        assert key in manifest
    assert manifest["corpus"]["fingerprint"] and manifest["base_model"]["fingerprint"]
    assert [m.name for m in load_store(out)] == ["bio", "food"]
    assert atomic.read_json(out / "run.json")["status"] == "finished"
    assert not (out / "checkpoints" / "food.pt").exists()


def test_peft_round_trip_gives_the_trained_logits(tiny_model, corpora, tmp_path):
    """The module on disk is the module that was trained: same logits to 1e-6."""
    from peft import PeftModel

    ids = torch.randint(5, 30, (2, 12))
    trained = {}

    def capture(domain, step, loss, model):
        if step == 12:
            model.eval()
            with torch.no_grad():
                trained[domain] = model(input_ids=ids).logits
            model.train()

    out = tmp_path / "run"
    manifests = pretrain(config(tiny_model, corpora, out, steps=12, fused=False), on_step=capture)
    auto = AUTO[manifests["food"]["objective"]]
    for domain in corpora:
        loaded = PeftModel.from_pretrained(auto.from_pretrained(tiny_model), out / domain).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logits, trained[domain], atol=1e-6, rtol=0)


class Crash(Exception):
    pass


@pytest.mark.parametrize("fused", [True, False])
def test_interrupted_run_resumes_to_the_same_modules(tiny_model, corpora, tmp_path, fused):
    reference = tmp_path / "reference"
    pretrain(config(tiny_model, corpora, reference, steps=25, dropout=0.1, fused=fused))

    def crash(domain, step, loss, model):
        if domain == "bio" and step == 17:  # after the checkpoint at 10 (in the second domain, when not fused)
            raise Crash

    out = tmp_path / "interrupted"
    with pytest.raises(Crash):
        pretrain(config(tiny_model, corpora, out, steps=25, dropout=0.1, fused=fused), on_step=crash)
    if fused:
        assert (out / "checkpoints" / "fused-food+bio.pt").exists() and not (out / "food").exists()
    else:
        assert (out / "food" / "domix_manifest.json").exists() and (out / "checkpoints" / "bio.pt").exists()
    assert not (out / "bio").exists()
    steps_seen = []
    pretrain(config(tiny_model, corpora, out, steps=25, dropout=0.1, fused=fused), on_step=lambda d, s, l, m: steps_seen.append((d, s)))
    first = ("food", 11) if fused else ("bio", 11)  # resumed at the checkpoint of step 10; food kept when not fused
    assert steps_seen[0] == first and steps_seen[-1] == ("bio", 25)
    for domain in corpora:
        a, b = adapter(reference, domain), adapter(out, domain)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), domain
    ref_manifest = atomic.read_json(reference / "bio" / "domix_manifest.json")
    manifest = atomic.read_json(out / "bio" / "domix_manifest.json")
    assert manifest["heldout"] == ref_manifest["heldout"]
    assert manifest["training"]["loss_curve"] == ref_manifest["training"]["loss_curve"]


def test_fused_training_makes_the_modules_of_separate_runs(tiny_llama, corpora, tmp_path):
    """Domains of different sizes (so different step counts), fused vs one after another, float64."""
    small = tmp_path / "small.txt"
    small.write_text("\n".join(Path(corpora["bio"]).read_text().splitlines()[:90]) + "\n")
    domains = {"food": corpora["food"], "bio": small}
    fused = pretrain(config(tiny_llama, domains, tmp_path / "fused", steps=None, epochs=2, dtype="float64"))
    separate = pretrain(config(tiny_llama, domains, tmp_path / "separate", steps=None, epochs=2, dtype="float64", fused=False))
    assert fused["food"]["training"]["steps"] != fused["bio"]["training"]["steps"]
    for domain in domains:
        assert fused[domain]["training"]["steps"] == separate[domain]["training"]["steps"]
        assert fused[domain]["training"]["fused_with"] == ["food", "bio"]
        a, b = adapter(tmp_path / "fused", domain), adapter(tmp_path / "separate", domain)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-7), key
        assert fused[domain]["heldout"]["loss_after"] == pytest.approx(separate[domain]["heldout"]["loss_after"], rel=1e-5)
        config_files = [json.loads((tmp_path / run / domain / "adapter_config.json").read_text()) for run in ("fused", "separate")]
        assert config_files[0] == config_files[1]  # fused modules are written as PEFT writes them


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_checkpointing_trains_the_same_modules(tiny_model, corpora, tmp_path, fused):
    """Activations recomputed in backward (with the same dropout and masks) give the same modules, float64."""
    settings = dict(steps=6, dtype="float64", dropout=0.1, fused=fused)
    plain = pretrain(config(tiny_model, corpora, tmp_path / "plain", **settings))
    recomputed = pretrain(config(tiny_model, corpora, tmp_path / "ckpt", gradient_checkpointing=True, **settings))
    for domain in corpora:
        a, b = adapter(tmp_path / "plain", domain), adapter(tmp_path / "ckpt", domain)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-12) for k in a)
        losses = [[loss for _, loss in run[domain]["training"]["loss_curve"]] for run in (plain, recomputed)]
        assert len(losses[0]) == 6 and losses[1] == pytest.approx(losses[0], rel=1e-9)


def test_killed_process_resumes_to_the_same_module(tiny_llama, corpora, tmp_path):
    args = [sys.executable, "-m", "domix", "pretrain", "--model", str(tiny_llama), "--domain", f"food={corpora['food']}",
            "--steps", "150", "--batch-size", "8", "--seq-len", "32", "--checkpoint-every", "5", "--lr", "5e-3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "reference")], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "checkpoints" / "food.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "food").exists(), "the run finished before it could be killed"
    done = subprocess.run(args + ["--out", str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming domain 'food' from step" in done.stdout
    a, b = adapter(tmp_path / "reference", "food"), adapter(out, "food")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_is_never_overwritten_silently(tiny_llama, corpora, tmp_path):
    out = tmp_path / "run"
    pretrain(config(tiny_llama, corpora, out, steps=3))
    before = adapter(out, "food")
    with pytest.raises(DomixError, match="holds a finished run; pass --overwrite"):
        pretrain(config(tiny_llama, corpora, out, steps=3))
    assert all(torch.equal(before[k], adapter(out, "food")[k]) for k in before)
    pretrain(config(tiny_llama, corpora, out, steps=5), overwrite=True)
    assert atomic.read_json(out / "food" / "domix_manifest.json")["training"]["steps"] == 5


def test_unfinished_run_with_other_settings_or_data_is_refused(tiny_llama, corpora, tmp_path):
    out = tmp_path / "run"
    bio = tmp_path / "bio.txt"
    bio.write_text(Path(corpora["bio"]).read_text())
    mine = {"food": corpora["food"], "bio": bio}

    def crash(domain, step, loss, model):
        if step == 12:
            raise Crash

    with pytest.raises(Crash):
        pretrain(config(tiny_llama, mine, out), on_step=crash)
    with pytest.raises(DomixError, match=r"unfinished run with other settings \(lr\)"):
        pretrain(config(tiny_llama, mine, out, lr=1e-3))
    bio.write_text(bio.read_text() + "the food\n")
    with pytest.raises(DomixError, match=r"corpus of domain\(s\) \['bio'\] changed"):
        pretrain(config(tiny_llama, mine, out))


def test_overwrite_keeps_the_old_run_until_the_new_inputs_check_out(tiny_llama, corpora, tmp_path):
    out = tmp_path / "run"
    pretrain(config(tiny_llama, {"food": corpora["food"]}, out, steps=3))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DomixError, match="has no text"):
        pretrain(config(tiny_llama, {"food": tmp_path / "empty.txt"}, out, steps=3), overwrite=True)
    assert (out / "food" / "adapter_model.safetensors").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DomixError, match="not empty and holds no domix run"):
        pretrain(config(tiny_llama, corpora, tmp_path / "mine"), overwrite=True)


def test_train_head_option_trains_a_copy_of_the_head(tiny_bert, corpora, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    pretrain(config(tiny_bert, {"food": corpora["food"]}, out, steps=10, train_head=True))
    module = load_module(out / "food")
    assert any(k.startswith("cls.") for k in module.other)
    ids = torch.randint(5, 30, (2, 12))
    peft_model = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(tiny_bert), out / "food").eval()
    merged = merge_into(AutoModelForMaskedLM.from_pretrained(tiny_bert), module).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-5, rtol=0)


def test_yaml_config_with_command_line_overrides(tiny_llama, corpora, tmp_path, capsys):
    cfg_file = tmp_path / "pretrain.yaml"
    cfg_file.write_text(
        f"model: {tiny_llama}\nout: {tmp_path / 'run'}\nsteps: 4\nbatch-size: 4\nseq_len: 16\nrank: 4\n"
        f"domains:\n  food: {corpora['food']}\n"
    )
    assert main(["pretrain", "--config", str(cfg_file), "--rank", "2", "--domain", f"bio={corpora['bio']}"]) == 0
    store = {m.name: m for m in load_store(tmp_path / "run")}
    assert set(store) == {"food", "bio"}
    assert store["food"].rank == 2 and store["food"].manifest["training"]["steps"] == 4
    assert "held-out before" in capsys.readouterr().out
    assert main(["modules", str(tmp_path / "run")]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in listing] == ["bio", "food"] and "rank 2, 14 layers" in listing[0]


def test_bfloat16_base_trains_and_keeps_the_fingerprint(tiny_llama, corpora, tmp_path):
    fp32 = pretrain(config(tiny_llama, {"food": corpora["food"]}, tmp_path / "fp32", steps=20))["food"]
    bf16 = pretrain(config(tiny_llama, {"food": corpora["food"]}, tmp_path / "bf16", steps=20, dtype="bfloat16"))["food"]
    assert bf16["base_model"]["fingerprint"] == fp32["base_model"]["fingerprint"]
    assert bf16["heldout"]["loss_after"] < bf16["heldout"]["loss_before"] - 0.05
    assert abs(bf16["heldout"]["loss_after"] - fp32["heldout"]["loss_after"]) < 0.05
    assert load_file(str(tmp_path / "bf16" / "food" / "adapter_model.safetensors"))["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].dtype == torch.float32


def test_two_processes_train_the_modules_of_one(tiny_llama, corpora, tmp_path):
    """torchrun with 2 CPU processes (gloo): each trains one domain; the modules equal one process's."""
    common = ["--model", str(tiny_llama), "--domain", f"food={corpora['food']}", "--domain", f"bio={corpora['bio']}",
              "--steps", "12", "--batch-size", "8", "--seq-len", "32", "--lr", "5e-3", "--dtype", "float64"]
    assert "process 1 of 2 trains ['bio']" in _one_and_parallel(common, 2, tmp_path)
    assert atomic.read_json(tmp_path / "parallel" / "run.json")["status"] == "finished"


def test_more_processes_than_domains_train_data_parallel(tiny_llama, corpora, tmp_path):
    """3 processes, 2 domains: 'food' is shared by ranks 0 and 2; the modules equal one process's."""
    common = ["--model", str(tiny_llama), "--domain", f"food={corpora['food']}", "--domain", f"bio={corpora['bio']}",
              "--steps", "10", "--batch-size", "8", "--seq-len", "32", "--lr", "5e-3", "--dtype", "float64", "--no-fused"]
    assert "process 2 of 3 trains ['food'], data-parallel with 1 other process(es)" in _one_and_parallel(common, 3, tmp_path)


def _one_and_parallel(common: list[str], processes: int, tmp_path) -> str:
    """domix pretrain with ``common`` flags in one process (OUT one/) and under torchrun with ``processes`` (OUT
    parallel/); asserts both made the same modules; returns what the parallel run printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "domix", "pretrain", *common, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    many = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                           "-m", "domix", "pretrain", *common, "--out", str(tmp_path / "parallel")], env=env, capture_output=True, text=True)
    assert many.returncode == 0, many.stderr[-3000:]
    for domain in ("food", "bio"):
        a, b = adapter(tmp_path / "one", domain), adapter(tmp_path / "parallel", domain)
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a), domain
    return many.stdout


def test_a_fraction_of_an_epoch_trains_that_share_of_the_batches(tiny_llama, corpora, tmp_path):
    """--epochs 0.25: a quarter of one pass, rounded up to whole steps (the store for 'modules at 25% of the epoch')."""
    steps = {}
    for epochs in (1, 0.25):
        manifests = pretrain(PretrainConfig(model=str(tiny_llama), domains={"food": str(corpora["food"])}, out=str(tmp_path / str(epochs)),
                                            epochs=epochs, batch_size=4, seq_len=32))
        steps[epochs] = manifests["food"]["training"]["steps"]
    blocks = json.loads((tmp_path / "1" / "food" / "domix_manifest.json").read_text())["training"]["tokens_seen"] // 32
    assert steps[1] == -(-blocks // 4)  # one pass over the training blocks, 4 a step (the last batch may be short)
    assert steps[0.25] == -(-steps[1] // 4)
    assert main(["pretrain", "--model", str(tiny_llama), "--domain", f"food={corpora['food']}", "--out", str(tmp_path / "z"),
                 "--epochs", "0"]) == 2
