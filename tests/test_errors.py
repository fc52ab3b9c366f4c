"""Every bad input gives one clear line on stderr and exit status 2, never a traceback."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from domix.cli import main
from domix.errors import DomixError
from domix.pretraining.config import PretrainConfig
from domix.engine.loop import train_domain


def run_cli(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("domix: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def pretrain_args(model, out, *domains, extra=()):
    args = ["pretrain", "--model", str(model), "--out", str(out), "--steps", "2", "--batch-size", "2", "--seq-len", "16"]
    for d in domains:
        args += ["--domain", d]
    return args + list(extra)


def test_missing_corpus(tiny_llama, tmp_path, capsys):
    line = run_cli(pretrain_args(tiny_llama, tmp_path / "o", f"food={tmp_path / 'nope.txt'}"), capsys)
    assert "corpus of domain 'food' not found" in line and "nope.txt" in line


def test_empty_corpus(tiny_llama, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n \n")
    line = run_cli(pretrain_args(tiny_llama, tmp_path / "o", f"food={tmp_path / 'empty.txt'}"), capsys)
    assert "has no text" in line


def test_corpus_too_short_for_one_sequence(tiny_llama, tmp_path, capsys):
    (tmp_path / "short.txt").write_text("the food\n")
    line = run_cli(pretrain_args(tiny_llama, tmp_path / "o", f"food={tmp_path / 'short.txt'}"), capsys)
    assert "too short for one sequence of 16" in line and "--seq-len" in line


def test_unknown_model(corpora, tmp_path, capsys):
    line = run_cli(pretrain_args(tmp_path / "no-such-model", tmp_path / "o", f"food={corpora['food']}"), capsys)
    assert "cannot load model" in line


def test_target_modules_that_match_nothing(tiny_llama, corpora, tmp_path, capsys):
    line = run_cli(pretrain_args(tiny_llama, tmp_path / "o", f"food={corpora['food']}", extra=["--target-modules", "query,value"]), capsys)
    assert "match no linear layer" in line and "q_proj" in line


def test_unwritable_output_folder(tiny_llama, corpora, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    line = run_cli(pretrain_args(tiny_llama, tmp_path / "a-file" / "out", f"food={corpora['food']}"), capsys)
    assert "cannot write the output" in line and "not a folder you can write to" in line


def test_non_finite_loss_stops_the_run(tiny_llama, corpora, tmp_path, capsys):
    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(broken)
    line = run_cli(pretrain_args(broken, tmp_path / "o", f"food={corpora['food']}"), capsys)
    assert "non-finite loss at step 1 of domain 'food'" in line and "--lr" in line


def test_non_finite_loss_keeps_the_last_good_checkpoint(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    from domix.base_model import load_base_model

    base = load_base_model(str(tiny_llama))
    model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj"]))

    def poison(domain, step, loss, model):
        if step == 3:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))

    checkpoint = tmp_path / "c.pt"
    cfg = PretrainConfig(steps=10, batch_size=4, checkpoint_every=2, lr=1e-2)
    with pytest.raises(DomixError, match=r"non-finite loss at step 4 .* last good checkpoint is kept"):
        train_domain(model, "x", torch.randint(3, 30, (16, 16)), "clm", base.tokenizer, cfg, torch.device("cpu"), checkpoint, poison)
    state = torch.load(checkpoint, weights_only=False)
    assert state["progress"].steps == 2
    assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_bad_settings(tiny_llama, corpora, tmp_path, capsys):
    assert "--lora-rank must be at least 1" in run_cli(pretrain_args(tiny_llama, tmp_path / "o", f"food={corpora['food']}", extra=["--rank", "0"]), capsys)
    assert "no domain corpus given" in run_cli(pretrain_args(tiny_llama, tmp_path / "o"), capsys)
    (tmp_path / "c.yaml").write_text("rnak: 4\n")
    assert "unknown settings ['rnak']" in run_cli(["pretrain", "--config", str(tmp_path / "c.yaml")], capsys)


def test_the_installed_command_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "domix", "pretrain", "--model", str(tmp_path / "nothing"),
                           "--domain", f"a={tmp_path / 'a.txt'}", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"domix: error: corpus of domain 'a' not found: {tmp_path / 'a.txt'} does not exist"]


def tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_never_replaces_a_folder_or_file_nor_its_own_input(tiny_llama, task, tmp_path, capsys):
    from domix.finetuning.config import FinetuneConfig
    from domix.finetuning.run import finetune

    finetune(FinetuneConfig(model=str(tiny_llama), task=str(task), out=str(tmp_path / "run"), method="head", epochs=1,
                            batch_size=16, max_length=32))
    model = tmp_path / "run" / "model"
    kept = tmp_path / "store"
    kept.mkdir()
    (kept / "module.txt").write_text("a user's file")
    (tmp_path / "notes.txt").write_text("notes")
    before = tree(tmp_path)
    line = run_cli(["export", str(model), str(kept)], capsys)
    assert "exists and is not empty; pass --overwrite" in line
    assert "is a file" in run_cli(["export", str(model), str(tmp_path / "notes.txt")], capsys)
    for own in (model, tmp_path / "run", model / "sub"):  # the input itself, a folder holding it, a folder inside it
        assert "which writing it would destroy" in run_cli(["export", str(model), str(own), "--overwrite"], capsys)
    assert tree(tmp_path) == before  # nothing was touched
    assert main(["export", str(model), str(kept), "--overwrite"]) == 0  # asked for: replaced
    assert (kept / "config.json").is_file() and not (kept / "module.txt").exists()


def test_convert_gguf_refuses_an_existing_folder(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert "exists and is not empty" in run_cli(["convert-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "out")], capsys)


def test_text_inputs_are_strict_utf8_with_the_byte_offset(tiny_llama, task, tmp_path, capsys):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    line = run_cli(pretrain_args(tiny_llama, tmp_path / "o", f"food={latin}"), capsys)
    assert f"{latin} is not UTF-8 text (byte 3 is 0xe9)" in line and "save it as UTF-8" in line
    bad_task = tmp_path / "task"
    bad_task.mkdir()
    for split in ("train", "dev", "test"):
        (bad_task / f"{split}.jsonl").write_bytes((task / f"{split}.jsonl").read_bytes())
    data = b'{"text": "ok", "label": "food"}\n{"text": "\xff", "label": "bio"}\n'
    (bad_task / "dev.jsonl").write_bytes(data)
    line = run_cli(["finetune", "--model", str(tiny_llama), "--method", "head", "--task", str(bad_task), "--out", str(tmp_path / "f")], capsys)
    offset = data.index(bytes([0xFF]))
    assert f"dev.jsonl is not UTF-8 text (byte {offset} is 0xff)" in line


def test_binary_data_saved_as_text_is_refused(tiny_llama, tmp_path, capsys):
    junk = tmp_path / "junk.txt"
    junk.write_bytes(bytes(range(0, 32)) * 400)  # valid UTF-8, but control codes
    line = run_cli(pretrain_args(tiny_llama, tmp_path / "o", f"food={junk}"), capsys)
    assert "is not text:" in line and "control codes" in line


def damaged_store(store, tmp_path, name: str):
    import shutil

    copy = tmp_path / name
    shutil.copytree(store, copy)
    return copy


def test_a_module_whose_config_rank_differs_from_its_weights_is_refused(llama_store, task, tmp_path, capsys):
    import json

    store = damaged_store(llama_store, tmp_path, "store")
    config = json.loads((store / "food" / "adapter_config.json").read_text())
    config["r"] = 2  # the weights have rank 4
    (store / "food" / "adapter_config.json").write_text(json.dumps(config))
    line = run_cli(["finetune", "--modules", str(store), "--task", str(task), "--out", str(tmp_path / "f")], capsys)
    assert "says r=2, but the weights of" in line and "have rank 4" in line


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_module_file_is_refused(llama_store, task, tmp_path, capsys, damage):
    store = damaged_store(llama_store, tmp_path, "store")
    weights = store / "food" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 16 + data[16:])
    line = run_cli(["finetune", "--modules", str(store), "--task", str(task), "--out", str(tmp_path / "f")], capsys)
    assert "cannot be read" in line and "the module is damaged" in line


def test_yaml_numbers_are_converted_and_bad_values_named(tiny_llama, corpora, tmp_path, capsys):
    from domix.pretraining.config import PretrainConfig
    from domix.settings import build_config

    good = tmp_path / "good.yaml"
    good.write_text(f"model: {tiny_llama}\nout: {tmp_path / 'o'}\ndomains: {{food: {corpora['food']}}}\nlr: 1e-3\nsteps: '4'\n")
    cfg = build_config(PretrainConfig, str(good), {})
    assert cfg.lr == 0.001 and cfg.steps == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("steps: '4'", "steps: two"))
    line = run_cli(["pretrain", "--config", str(bad)], capsys)
    assert line == f"domix: error: setting 'steps' in {bad} is 'two', which is not a whole number"
    listed = tmp_path / "listed.yaml"
    listed.write_text(f"model: {tiny_llama}\nout: {tmp_path / 'o'}\ndomains: [{corpora['food']}]\n")
    line = run_cli(["pretrain", "--config", str(listed)], capsys)
    assert line.startswith(f"domix: error: setting 'domains' in {listed} is [") and line.endswith("which is not a mapping")


def test_version(capsys):
    import domix

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"domix {domix.__version__}"
