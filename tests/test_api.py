"""The public Python API: `from domix import ...` gives each name of __all__, cheaply, and the README's
Python section runs as written (with a tiny model and tiny data in place of its names)."""

import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import domix

ROOT = Path(__file__).resolve().parents[1]


def test_importing_domix_and_its_settings_loads_no_torch():
    code = ("import sys, domix; from domix import PretrainConfig, FinetuneConfig, InstructConfig, CompareConfig, BridgeConfig; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", domix.__all__)
def test_every_public_name_imports_with_its_documentation(name):
    value = getattr(domix, name)
    if name == "__version__":
        assert re.fullmatch(r"\d+\.\d+\.\d+", value)
        return
    assert not isinstance(value, types.ModuleType), f"domix.{name} is a module, not the {name} users import"
    assert inspect.getdoc(value), f"domix.{name} has no docstring"
    if inspect.isfunction(value):
        signature = inspect.signature(value)
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), f"domix.{name}: untyped parameter"
        assert signature.return_annotation is not inspect.Signature.empty, f"domix.{name}: no return type"


def test_no_subpackage_shares_a_name_with_a_function():
    """The functions are domix.pretrain, finetune, compare; their packages are pretraining, finetuning, comparison: importing
    a package never rebinds a function's name (nothing in domix guards it)."""
    import importlib
    import pkgutil

    packages = {m.name for m in pkgutil.iter_modules(domix.__path__)}
    assert not packages & set(domix.__all__), packages & set(domix.__all__)
    for package in ("comparison", "finetuning", "pretraining"):
        importlib.import_module(f"domix.{package}.config")
    from domix import compare, finetune, pretrain
    from domix.comparison.run import compare as compare_function
    from domix.finetuning.run import finetune as finetune_function
    from domix.pretraining.run import pretrain as pretrain_function

    assert (compare, finetune, pretrain) == (compare_function, finetune_function, pretrain_function)
    assert domix.finetune is finetune_function


def readme_python_section() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### In Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readmes_python_section_runs(tiny_bert, corpora, task, tmp_path, monkeypatch, capsys):
    blocks = readme_python_section()
    assert len(blocks) == 2
    names = {'"roberta-base"': repr(str(tiny_bert)), '"pubmed.txt"': repr(str(corpora["bio"])),
             '"papers.txt"': repr(str(corpora["food"])), '"tasks/chemprot"': repr(str(task)),
             '"tasks/chemprot/test.jsonl"': repr(str(task / "test.jsonl"))}
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        for name, value in names.items():
            block = block.replace(name, value)
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "['bio', 'cs']" in out
    scores = [line for line in out.splitlines() if line.startswith("{'accuracy'")]
    assert len(scores) == 2 and scores[0] == scores[1]  # evaluate() on the export gives the run's own test scores
    assert re.search(r"\d+ layers bridged; \d+ trainable", out)
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain")
    assert not any("Bridged" in type(m).__name__ for m in plain.modules())
