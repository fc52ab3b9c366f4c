"""Bad inputs and faults through the command line: one `domix: error:` line, exit 2, no traceback, and
nothing a user made changed. A store or task model works from any directory, and a moved base can be
pointed to with --model."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from domix import atomic
from domix.cli import main

from test_errors import run_cli, tree

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def head_model(tmp_path_factory, tiny_llama, task):
    """A task model trained on a copy of the tiny base (so a test may move the copy away)."""
    root = tmp_path_factory.mktemp("head-model")
    base = shutil.copytree(tiny_llama, root / "base")
    assert main(["finetune", "--model", str(base), "--task", str(task), "--out", str(root / "run"), "--method", "head",
                 "--epochs", "1", "--max-length", "24"]) == 0
    return root


def test_records_name_a_local_base_by_its_absolute_path_and_work_from_any_directory(head_model, task, tmp_path, monkeypatch, capsys):
    record = atomic.read_json(head_model / "run" / "model" / "domix_task.json")
    assert record["base_model"]["name"] == str((head_model / "base").resolve())
    monkeypatch.chdir(tmp_path)  # elsewhere
    assert main(["evaluate", str(head_model / "run" / "model"), str(task / "test.jsonl")]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_a_moved_base_is_named_and_pointed_to_with_model(head_model, task, tmp_path, capsys):
    model = head_model / "run" / "model"
    moved = shutil.move(str(head_model / "base"), tmp_path / "moved-base")
    try:
        line = run_cli(["evaluate", str(model), str(task / "test.jsonl")], capsys)
        assert "is not there any more; pass --model" in line
        assert main(["evaluate", str(model), str(task / "test.jsonl"), "--model", str(moved)]) == 0
        assert main(["export", str(model), str(tmp_path / "plain"), "--model", str(moved)]) == 0
    finally:
        shutil.move(moved, head_model / "base")
    exported = atomic.read_json(tmp_path / "plain" / "domix_export.json")
    assert exported["max_length"] == 24  # evaluate reads it back for the exported folder
    from domix.finetuning.evaluate import load_any

    assert load_any(tmp_path / "plain")[3] == 24


def choice_file(path):
    path.write_text('{"context": "the food", "choices": ["pizza", "gene"], "label": 0}\n')
    return path


def test_outputs_are_checked_writable_before_any_compute(head_model, task, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    blocked = tmp_path / "a-file" / "out.json"  # under a file: no one can create it, root included
    line = run_cli(["evaluate", str(head_model / "run" / "model"), str(task / "test.jsonl"), "--predictions", str(blocked)], capsys)
    assert "is not writable" in line
    tasks = ["--task", f"t={choice_file(tmp_path / 'mc.jsonl')}"]
    assert "is not writable" in run_cli(["eval-choice", str(head_model / "base"), *tasks, "--out", str(blocked)], capsys)
    assert "is a folder" in run_cli(["evaluate", str(head_model / "run" / "model"), str(task / "test.jsonl"),
                                     "--predictions", str(tmp_path)], capsys)


def test_a_missing_model_folder_is_named_plainly(tmp_path, capsys):
    line = run_cli(["eval-choice", str(tmp_path / "no-model"), "--task", f"t={choice_file(tmp_path / 'mc.jsonl')}"], capsys)
    assert "no such local folder or file" in line and "Repo id" not in line


def test_debug_shows_where_an_error_was_raised(tmp_path, capsys):
    assert main(["--debug", "modules", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("domix: error: store")


def test_a_full_disk_is_one_line_and_the_rerun_finishes(tiny_llama, corpora, tmp_path):
    """A file-size limit of 48 KiB makes the first large write (a module or a checkpoint) fail as a full disk would."""
    resource = pytest.importorskip("resource")
    import signal

    out = tmp_path / "store"
    command = [sys.executable, "-m", "domix", "pretrain", "--model", str(tiny_llama), "--domain", f"food={corpora['food']}",
               "--out", str(out), "--steps", "6", "--batch-size", "4", "--seq-len", "16", "--checkpoint-every", "2"]

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, 48 * 1024))

    full = subprocess.run(command, env=ENV, capture_output=True, text=True, preexec_fn=limit_file_size)
    assert full.returncode == 2, full.stderr[-2000:]
    lines = [line for line in full.stderr.splitlines() if line.startswith("domix: error: ")]
    assert len(lines) == 1 and "no room left to write" in lines[0] and "Traceback" not in full.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written left behind
    done = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert atomic.read_json(out / "run.json")["status"] == "finished"


def test_bad_inputs_leave_the_users_files_alone(head_model, task, tmp_path, capsys):
    before = tree(head_model)
    run_cli(["evaluate", str(head_model / "run" / "model"), str(tmp_path / "missing.jsonl")], capsys)
    run_cli(["export", str(head_model / "run" / "model"), str(head_model / "run"), "--overwrite"], capsys)
    run_cli(["finetune", "--model", str(head_model / "base"), "--task", str(task), "--out", str(head_model / "run")], capsys)
    assert tree(head_model) == before


def test_every_flag_and_argument_says_what_it_is():
    import argparse

    from domix.cli import build_parser

    silent = []

    def walk(parser, command):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{command} {name}")
            elif not action.help and not isinstance(action, argparse._HelpAction):
                silent.append(f"{command} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "domix")
    assert silent == []


def test_a_module_whose_config_does_not_name_its_layers_is_refused(llama_store, tmp_path, capsys):
    module = shutil.copytree(llama_store / "food", tmp_path / "food")
    config = atomic.read_json(module / "adapter_config.json")
    config["target_modules"] = ["q_proj"]  # the weights adapt every linear layer
    atomic.write_json(module / "adapter_config.json", config)
    from domix.errors import DomixError
    from domix.store import load_module

    with pytest.raises(DomixError, match=r"that its config's target_modules do not name"):
        load_module(module)
    config["target_modules"] = sorted({k.split(".")[-3] for k in load_file(str(module / "adapter_model.safetensors"))})
    atomic.write_json(module / "adapter_config.json", config)
    assert load_module(module).rank == 4  # named by their leaf names, as PEFT writes them: accepted


def test_a_module_of_the_lm_model_fits_the_bare_model_too(llama_store, tiny_llama):
    """A module records its layers by the LM model's names (model.layers.0...); merged or composed into the bare
    AutoModel (layers.0...) it changes the hidden states exactly as in the LM model's backbone."""
    from transformers import AutoModel, AutoModelForCausalLM

    from domix.methods.bridge import compose
    from domix.store import load_store, merge_into

    modules = load_store(llama_store)
    ids = torch.randint(3, 30, (2, 9), generator=torch.Generator().manual_seed(0))

    def hidden(model):
        with torch.no_grad():
            return model(input_ids=ids).last_hidden_state

    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    bare = AutoModel.from_pretrained(tiny_llama, dtype=torch.float64)
    plain = hidden(bare)
    merge_into(lm, modules[0])
    merge_into(bare, modules[0])
    assert torch.allclose(hidden(bare), hidden(lm.model), atol=1e-12) and not torch.allclose(hidden(bare), plain, atol=1e-6)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float64)
    bare = AutoModel.from_pretrained(tiny_llama, dtype=torch.float64)
    assert sorted(compose(bare, modules)) == sorted(n.removeprefix("model.") for n in compose(lm, modules))
    for model in (lm, bare):  # a trained bridge, so the modules matter
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(hidden(bare), hidden(lm.model), atol=1e-12)
