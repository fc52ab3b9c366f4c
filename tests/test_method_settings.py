"""Method settings live with their method: each is a dataclass in the method's folder, named in the
registry, which the command's settings inherit. The generic settings name no method's field; the flags
and YAML keys come from the method's class; old YAML files and run records keep loading."""

import ast
import dataclasses
from pathlib import Path

import pytest

from domix.cli import build_parser
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.llm.config import InstructConfig
from domix.methods.registry import STAGE1, STAGE2, method_settings
from domix.pretraining.config import PretrainConfig
from domix.settings import build_config

SRC = Path(__file__).resolve().parents[1] / "src" / "domix"
COMMANDS = {"pretrain": (PretrainConfig, "pretraining/config.py"), "finetune": (FinetuneConfig, "finetuning/config.py"),
            "instruct": (InstructConfig, "llm/config.py")}


def own_fields(command: str) -> set[str]:
    return {f.name for cls in method_settings(command) for f in dataclasses.fields(cls)}


def flags_of(command: str) -> set[str]:
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {o for a in sub._actions for o in a.option_strings}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_generic_settings_name_no_methods_field(command):
    cls, path = COMMANDS[command]
    tree = ast.parse((SRC / path).read_text())
    declared = {node.target.id for node in ast.walk(tree) if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    assert own_fields(command), f"{command}: no method brings settings"
    assert not declared & own_fields(command), f"{path} declares method fields {declared & own_fields(command)}"
    source = (SRC / path).read_text()
    for name in own_fields(command):
        assert f".{name}" not in source, f"{path} reads the method's field {name}"
    # ... yet the command's settings have every one of them, as YAML keys and flags
    names = {f.name for f in dataclasses.fields(cls)}
    assert own_fields(command) <= names
    assert {"--" + n.replace("_", "-") for n in own_fields(command)} <= flags_of(command)


def test_every_registry_settings_class_lives_in_its_methods_folder():
    for entries in (STAGE1, STAGE2):
        for name, entry in entries.items():
            for command, target in entry.settings.items():
                assert target.__module__.startswith("domix.methods."), (name, target)
                assert command in COMMANDS


def test_old_yaml_and_recorded_settings_keep_loading(tmp_path):
    """A YAML file written before the move (flat mode_* and bridge keys) gives the same settings."""
    old = tmp_path / "old.yaml"
    old.write_text("task: t\nmodules: m\nout: o\nmethod: mode\nmode_gate_lr: 0.001\nmode_device_map: {experts: cpu}\n")
    cfg = build_config(FinetuneConfig, str(old), {})
    assert (cfg.mode_gate_lr, cfg.mode_device_map) == (0.001, {"experts": "cpu"})
    old.write_text("task: t\nmodules: m\nout: o\np_init: average\np_lr: 10x\nb_lr: matched\np_weight_decay: 0.0\n")
    cfg = build_config(FinetuneConfig, str(old), {})
    assert (cfg.p_init, cfg.p_lr, cfg.b_lr, cfg.p_weight_decay) == ("average", "10x", "matched", 0.0)
    old.write_text("model: m\nout: o\nmethod: mixda\ngeneral: g\ndomains: {a: x}\nmixda_layers: [1, 3]\nmode_blocks: [0, 2]\n")
    cfg = build_config(PretrainConfig, str(old), {})
    assert (cfg.mixda_layers, cfg.mode_blocks) == ([1, 3], [0, 2])
    # a run record's settings (run.json "config") rebuild the same settings object
    recorded = FinetuneConfig(**FinetuneConfig(task="t", modules="m", out="o").to_dict()).validate()
    assert (recorded.p_lr, recorded.p_weight_decay) == ("10x", 0.0)  # domix's default bridge: the published LLM code's
    assert (InstructConfig(train="x", modules="m", out="o").validate().p_weight_decay) == 0.0


def test_a_methods_check_still_refuses_its_bad_values():
    with pytest.raises(DomixError, match="--mode-gate-lr must be positive"):
        FinetuneConfig(task="t", modules="m", out="o", method="mode", mode_gate_lr=-1).validate()
    with pytest.raises(DomixError, match="apply to --method mode, not domix"):
        FinetuneConfig(task="t", modules="m", out="o", mode_gate_lr=1e-3).validate()
    with pytest.raises(DomixError, match="--new-rank adds a fresh block"):
        FinetuneConfig(task="t", model="m", out="o", method="lora", new_rank=4).validate()
    with pytest.raises(DomixError, match="--mixda-layers takes comma-separated"):
        PretrainConfig(model="m", out="o", domains={"a": "x"}, mixda_layers="a,b").validate()
    with pytest.raises(DomixError, match="--p-weight-decay must be zero or positive"):
        InstructConfig(train="x", modules="m", out="o", p_weight_decay=-1.0).validate()
