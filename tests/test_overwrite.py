"""--overwrite never destroys a command's own input, and replaces only a run of its own kind.

Every command with an --overwrite flag is walked (found in the parser, so a new one without a case
here fails): each of its inputs, and a folder holding one, is tried as its output, with --overwrite.
Each attempt must end in one error line, exit 2, before any compute, and leave the input as it was.
"""

import argparse
import shutil

import pytest
import yaml

from domix import atomic
from domix.cli import build_parser, main

from test_errors import run_cli, tree


def commands_with_overwrite() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, p in sub.choices.items() if any("--overwrite" in a.option_strings for a in p._actions)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_llama, llama_store, corpora, task):
    """Copies of everything the commands read, so a failure here cannot harm the session's fixtures."""
    root = tmp_path_factory.mktemp("own-inputs")
    made = {
        "model": shutil.copytree(tiny_llama, root / "model"),
        "store": shutil.copytree(llama_store, root / "store"),
        "task": shutil.copytree(task, root / "task"),
        "corpora": root / "corpora",
        "instruct": root / "instruct",
    }
    made["corpora"].mkdir()
    for name, path in corpora.items():
        shutil.copy(path, made["corpora"] / f"{name}.txt")
    made["instruct"].mkdir()
    atomic.write_text(made["instruct"] / "train.jsonl", "".join(
        f'{{"instruction": "name the topic of w{i}", "output": "topic {i % 2}"}}\n' for i in range(16)))
    adapter = root / "adapter"
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(made["model"]), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    made["adapter"] = adapter
    gguf = root / "gguf" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")  # refused before it is read
    made["gguf"] = gguf
    return made


def cases(i: dict) -> dict[str, list[list[str]]]:
    """Per command: argument lists whose --out (or OUT) is one of the command's own inputs, or holds one."""
    corpus = sorted(i["corpora"].glob("*.txt"))[0]
    domains = [f"--domain={p.stem}={p}" for p in sorted(i["corpora"].glob("*.txt"))]
    pretrain = ["pretrain", "--model", str(i["model"]), *domains, "--steps", "1", "--seq-len", "16", "--overwrite", "--out"]
    finetune = ["finetune", "--task", str(i["task"]), "--epochs", "1", "--overwrite", "--out"]
    instruct = ["instruct", "--train", str(i["instruct"] / "train.jsonl"), "--template", "plain", "--epochs", "1", "--overwrite", "--out"]
    compare = i["compare"]
    return {
        "pretrain": [pretrain + [str(i["model"])], pretrain + [str(i["corpora"])], pretrain + [str(corpus)],
                     pretrain + [str(i["corpora"].parent)]],
        "finetune": [finetune + [str(i["store"]), "--modules", str(i["store"])],  # the store it composes
                     finetune + [str(i["task"]), "--modules", str(i["store"])],
                     finetune + [str(i["task"] / "runs"), "--modules", str(i["store"])],  # inside the task folder
                     finetune + [str(i["model"]), "--model", str(i["model"]), "--method", "head"]],
        "instruct": [instruct + [str(i["store"]), "--modules", str(i["store"])],
                     instruct + [str(i["adapter"]), "--adapter", str(i["adapter"]), "--model", str(i["model"])],
                     instruct + [str(i["instruct"]), "--method", "lora", "--model", str(i["model"])],
                     instruct + [str(i["model"]), "--method", "lora", "--model", str(i["model"])]],
        "compare": [["compare", str(compare), "--overwrite", "--out", str(i["task"])],
                    ["compare", str(compare), "--overwrite", "--out", str(i["corpora"])]],
        "export": [["export", str(i["store"]), str(i["store"]), "--overwrite"]],
        "convert-gguf": [["convert-gguf", str(i["gguf"]), str(i["gguf"]), "--overwrite"],
                         ["convert-gguf", str(i["gguf"]), str(i["gguf"].parent), "--overwrite"]],
    }


def test_every_command_with_overwrite_refuses_its_own_inputs_as_output(inputs, tmp_path, capsys):
    compare = tmp_path / "compare.yaml"
    compare.write_text(yaml.safe_dump({
        "model": str(inputs["model"]), "out": str(tmp_path / "cmp"), "methods": ["domix"], "seeds": [1],
        "domains": {p.stem: str(p) for p in sorted(inputs["corpora"].glob("*.txt"))},
        "tasks": {"t": {"path": str(inputs["task"]), "domain": sorted(inputs["corpora"].glob("*.txt"))[0].stem}},
        "pretrain": {"steps": 1, "seq_len": 16}, "finetune": {"epochs": 1, "max_length": 16}}))
    walked = cases({**inputs, "compare": compare})
    assert set(walked) == commands_with_overwrite()  # a new command with --overwrite needs its cases here
    before = {name: tree(path) if path.is_dir() else path.read_bytes() for name, path in inputs.items()}
    for command, attempts in walked.items():
        for args in attempts:
            line = run_cli(args, capsys)
            assert "input" in line and "choose another output folder" in line, (command, args, line)
    after = {name: tree(path) if path.is_dir() else path.read_bytes() for name, path in inputs.items()}
    assert after == before
    assert not (tmp_path / "cmp").exists()  # the comparison refused before its first job


def test_overwrite_replaces_only_a_run_of_the_same_kind(inputs, tmp_path, capsys):
    model, corpus = str(inputs["model"]), sorted(inputs["corpora"].glob("*.txt"))[0]
    store = tmp_path / "store"
    assert main(["pretrain", "--model", model, "--domain", f"r={corpus}", "--steps", "1", "--seq-len", "16", "--out", str(store)]) == 0
    finetune = ["finetune", "--model", model, "--task", str(inputs["task"]), "--method", "head", "--epochs", "1",
                "--max-length", "16"]
    # a module store (another one than the run composes) is not replaced by a task run
    kept = tree(store)
    line = run_cli(finetune + ["--out", str(store), "--overwrite"], capsys)
    assert "holds a module store (domix pretrain)" in line and "fine-tuning run" in line
    assert tree(store) == kept
    # nor a task run by a pre-training, nor by an instruction tuning
    assert main(finetune + ["--out", str(tmp_path / "run")]) == 0
    assert atomic.read_json(tmp_path / "run" / "run.json")["kind"] == "finetune"
    kept = tree(tmp_path / "run")
    line = run_cli(["pretrain", "--model", model, "--domain", f"r={corpus}", "--steps", "1", "--seq-len", "16",
                    "--out", str(tmp_path / "run"), "--overwrite"], capsys)
    assert "holds a fine-tuning run (domix finetune)" in line and "module store" in line
    line = run_cli(["instruct", "--model", model, "--method", "lora", "--train", str(inputs["instruct"] / "train.jsonl"),
                    "--out", str(tmp_path / "run"), "--overwrite"], capsys)
    assert "holds a fine-tuning run" in line and "instruction-tuning run" in line
    assert tree(tmp_path / "run") == kept
    # the same kind is replaced, as --overwrite says
    assert main(finetune + ["--out", str(tmp_path / "run"), "--overwrite", "--seed", "2"]) == 0
    assert atomic.read_json(tmp_path / "run" / "run.json")["config"]["seed"] == 2


def test_a_record_without_kind_is_read_by_its_settings():
    from domix.engine.runfolder import run_kind

    assert run_kind({"config": {"objective": "auto", "domains": {}}}) == "pretrain"
    assert run_kind({"config": {"task": "t"}}) == "finetune"
    assert run_kind({"config": {"template": "alpaca", "train": "x"}}) == "instruct"
    assert run_kind({"kind": "finetune", "config": {"objective": "auto"}}) == "finetune"


def test_a_repeated_name_is_refused_not_dropped(inputs, tmp_path, capsys):
    """A name given twice would keep only its last value (a dict, a YAML mapping): one line naming it instead."""
    model, store = str(inputs["model"]), str(inputs["store"])
    first, second = sorted(inputs["corpora"].glob("*.txt"))[:2]
    line = run_cli(["pretrain", "--model", model, "--domain", f"a={first}", "--domain", f"a={second}", "--out", str(tmp_path / "p")], capsys)
    assert "two --domain flags are named 'a'" in line and str(first) in line and str(second) in line
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "q", "choices": ["x", "y"], "answer": 0}\n')
    line = run_cli(["eval-choice", model, "--task", f"t={questions}", "--task", f"t={questions}"], capsys)
    assert "two --task flags are named 't'" in line
    line = run_cli(["instruct", "--model", model, "--adapter", str(inputs["adapter"]), "--adapter", str(inputs["adapter"]) + "/",
                    "--train", str(inputs["instruct"] / "train.jsonl"), "--out", str(tmp_path / "i")], capsys)
    assert "is given twice" in line
    name = sorted(p.name for p in inputs["store"].iterdir())[0]
    line = run_cli(["finetune", "--modules", store, "--domains", f"{name},{name}", "--task", str(inputs["task"]),
                    "--out", str(tmp_path / "f")], capsys)
    assert f"--domains names {name!r} twice" in line
    config = tmp_path / "settings.yaml"
    config.write_text(f"task: {inputs['task']}\nepochs: 1\nlr: 0.1\nepochs: 2\n")
    line = run_cli(["finetune", "--config", str(config), "--modules", store, "--out", str(tmp_path / "f")], capsys)
    assert "the key 'epochs' appears twice" in line and "line 4" in line
    compare = tmp_path / "compare.yaml"
    compare.write_text(f"model: {model}\ndomains:\n  a: {first}\n  a: {second}\ntasks:\n  t: {{path: {inputs['task']}, domain: a}}\n")
    line = run_cli(["compare", str(compare), "--dry-run"], capsys)
    assert "the key 'a' appears twice" in line and "line 4" in line
    assert not any((tmp_path / d).exists() for d in ("p", "i", "f"))


def test_export_and_convert_never_replace_another_commands_run_and_outputs_never_an_input_file(inputs, tmp_path, capsys):
    model = str(inputs["model"])
    run = tmp_path / "run"
    assert main(["finetune", "--model", model, "--task", str(inputs["task"]), "--method", "head", "--epochs", "1",
                 "--max-length", "16", "--out", str(run)]) == 0
    other = tmp_path / "other-run"
    assert main(["finetune", "--model", model, "--task", str(inputs["task"]), "--method", "head", "--epochs", "1",
                 "--max-length", "16", "--out", str(other), "--no-save-model"]) == 0
    store = shutil.copytree(inputs["store"], tmp_path / "store")
    for target, found in ((other, "a fine-tuning run"), (store, "a module store")):
        kept = tree(target)
        line = run_cli(["export", str(run / "model"), str(target), "--overwrite"], capsys)
        assert f"holds {found}" in line and "does not replace with an exported model" in line
        line = run_cli(["convert-gguf", str(inputs["gguf"]), str(target), "--overwrite"], capsys)
        assert f"holds {found}" in line
        assert tree(target) == kept
    assert main(["export", str(run / "model"), str(tmp_path / "plain")]) == 0
    assert main(["export", str(run / "model"), str(tmp_path / "plain"), "--overwrite"]) == 0  # an export replaces an export
    data = inputs["task"] / "test.jsonl"
    kept = data.read_bytes()
    line = run_cli(["evaluate", str(run / "model"), str(data), "--predictions", str(data)], capsys)
    assert "is the input" in line and data.read_bytes() == kept
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "q", "choices": ["x", "y"], "answer": 0}\n')
    for flag in ("--out", "--details"):
        line = run_cli(["eval-choice", model, "--task", f"t={questions}", flag, str(questions)], capsys)
        assert "is the input" in line
    assert questions.read_text().startswith('{"question"')


def test_a_setting_given_with_dash_and_underscore_is_refused(inputs, tmp_path, capsys):
    config = tmp_path / "settings.yaml"
    config.write_text(f"task: {inputs['task']}\nmax-length: 16\nmax_length: 512\n")
    line = run_cli(["finetune", "--config", str(config), "--modules", str(inputs["store"]), "--out", str(tmp_path / "f")], capsys)
    assert "gives 'max_length' twice (with - and _ in its name)" in line
