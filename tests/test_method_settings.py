"""Method settings live with their method: each is a dataclass in the method's folder, named in the
registry; a run's settings hold the chosen method's object (``method_options``), not every method's fields.
The generic settings name no method's field; the flags and YAML keys, flat, come from the method's class;
old YAML files and run records keep loading."""

import ast
import dataclasses
from pathlib import Path

import pytest

from domix.cli import build_parser
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.llm.config import InstructConfig
from domix.methods.registry import STAGE1, STAGE2, own_settings
from domix.pretraining.config import PretrainConfig
from domix.settings import build_config, setting_names

SRC = Path(__file__).resolve().parents[1] / "src" / "domix"
COMMANDS = {"pretrain": (PretrainConfig, "pretraining/config.py"), "finetune": (FinetuneConfig, "finetuning/config.py"),
            "instruct": (InstructConfig, "llm/config.py")}


def own_fields(command: str) -> set[str]:
    return {f.name for cls in own_settings(command).values() for f in dataclasses.fields(cls)}


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
    # ... nor holds them: a run's settings hold its method's own object ...
    assert not own_fields(command) & {f.name for f in dataclasses.fields(cls)}
    # ... yet the command takes every one of them, as YAML keys and flags
    assert own_fields(command) <= setting_names(cls)
    assert {"--" + n.replace("_", "-") for n in own_fields(command)} <= flags_of(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_run_holds_its_methods_settings_only(command):
    cls = COMMANDS[command][0]
    for method, options in cls.OWN_SETTINGS.items():
        assert isinstance(cls(method=method).method_options, options)
    without = next(m for m in (STAGE1 if command == "pretrain" else STAGE2) if m not in cls.OWN_SETTINGS)
    cfg = cls(method=without)
    assert cfg.method_options is None and not own_fields(command) & set(cfg.to_dict())


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
    assert (cfg.method_options.mode_gate_lr, cfg.method_options.mode_device_map) == (0.001, {"experts": "cpu"})
    old.write_text("task: t\nmodules: m\nout: o\np_init: average\np_lr: 10x\nb_lr: matched\np_weight_decay: 0.0\n")
    cfg = build_config(FinetuneConfig, str(old), {})
    o = cfg.method_options
    assert (o.p_init, o.p_lr, o.b_lr, o.p_weight_decay) == ("average", "10x", "matched", 0.0)
    # another method's settings at their defaults (old files and records hold every method's) are dropped
    old.write_text("model: m\nout: o\nmethod: mixda\ngeneral: g\ndomains: {a: x}\nmixda_layers: [1, 3]\nmode_block_size: 6\n")
    cfg = build_config(PretrainConfig, str(old), {})
    assert cfg.method_options.mixda_layers == [1, 3] and "mode_block_size" not in cfg.to_dict()
    old.write_text("model: m\nout: o\nmethod: mode\ndomains: {a: x}\nmode_blocks: [0, 2]\n")
    assert build_config(PretrainConfig, str(old), {}).method_options.mode_blocks == [0, 2]
    # a run record's settings (run.json "config") rebuild the same settings object
    recorded = FinetuneConfig(**FinetuneConfig(task="t", modules="m", out="o").to_dict()).validate()
    assert (recorded.method_options.p_lr, recorded.method_options.p_weight_decay) == ("10x", 0.0)  # the published LLM code's
    assert InstructConfig(train="x", modules="m", out="o").validate().method_options.p_weight_decay == 0.0
    # a record written when every run held every method's settings: a LoRA run's, with the bridge's defaults in it
    old_lora = {**FinetuneConfig(task="t", model="m", out="o", method="lora").to_dict(), "p_lr": "10x", "p_init": "scaled_identity",
                "mode_gate_lr": None, "mode_train_experts": False}
    assert FinetuneConfig(**old_lora).method_options is None


def test_a_methods_check_still_refuses_its_bad_values():
    with pytest.raises(DomixError, match="--mode-gate-lr must be positive"):
        FinetuneConfig(task="t", modules="m", out="o", method="mode", mode_gate_lr=-1).validate()
    # another method's setting given as a flag: the user meant it, so it is refused ...
    with pytest.raises(DomixError, match="--mode-gate-lr is a setting of method mode; --method domix does not read it"):
        build_config(FinetuneConfig, None, {"task": "t", "modules": "m", "out": "o", "mode_gate_lr": 1e-3})
    with pytest.raises(DomixError, match="--new-rank is a setting of method domix, domix_fixed, cat; --method lora does not"):
        build_config(FinetuneConfig, None, {"task": "t", "model": "m", "out": "o", "method": "lora", "new_rank": 4})
    # ... while settings shared by several methods (a YAML file, a comparison's shared section) leave it out
    assert FinetuneConfig(task="t", model="m", out="o", method="lora", new_rank=4, mode_gate_lr=1e-3).method_options is None
    with pytest.raises(DomixError, match="--mixda-layers takes comma-separated"):
        PretrainConfig(model="m", out="o", domains={"a": "x"}, method="mixda", general="g", mixda_layers="a,b").validate()
    with pytest.raises(DomixError, match="--p-weight-decay must be zero or positive"):
        InstructConfig(train="x", modules="m", out="o", p_weight_decay=-1.0).validate()
