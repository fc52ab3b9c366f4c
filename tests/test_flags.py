"""Each setting is declared once: its flag, type, help and default come from its dataclass field.

The command line is parsed as argparse builds it and compared with the dataclasses: an option that is not a
field's generated flag would be a hand-written twin that could drift from the field.
"""

import argparse
import dataclasses

import pytest

from domix.cli import build_parser
from domix.engine.runfolder import changed_settings
from domix.finetuning.config import EvaluateSettings, FinetuneConfig
from domix.llm.config import ChoiceSettings, GenerateSettings, InstructConfig
from domix.pretraining.config import PretrainConfig
from domix.settings import build_config, field_default, flag_names, flag_values, setting_fields

COMMANDS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "instruct": InstructConfig,
            "eval-choice": ChoiceSettings, "generate": GenerateSettings, "evaluate": EvaluateSettings}


def subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_has_one_flag_made_from_its_field(command):
    cls, parser = COMMANDS[command], subparser(command)
    by_dest = {}
    for action in parser._actions:
        by_dest.setdefault(action.dest, []).append(action)
    for f in setting_fields(cls):  # the method's own settings given flat, by their fields
        assert len(by_dest.get(f.name, [])) == 1, f"{command}: {f.name} has {len(by_dest.get(f.name, []))} flags"
        action = by_dest[f.name][0]
        names = flag_names(f)
        assert action.option_strings[: len(names)] == names or set(names) <= set(action.option_strings)
        assert action.default is None  # unset: the YAML file's or the recipe's value stands
        default = field_default(f)
        help = action.help.replace("%%", "%")
        if default not in (None, "", [], {}):
            shown = ("yes" if default else "no") if isinstance(default, bool) else (
                f"{default:g}" if isinstance(default, float) else str(default))
            assert help.endswith(f"(default {shown})"), f"{command} {f.name}: {help!r} does not end with its default {shown}"
            own = f.metadata["help"]
            assert "default" not in own, f"{command} {f.name}: its help types a default by hand: {own!r}"


# what a command takes besides its settings: the file of settings, the replace switch, positional inputs, eval-choice's tasks
NOT_SETTINGS = {"help", "config", "overwrite", "model", "prompt", "task_model", "data", "tasks"}


@pytest.mark.parametrize("command", COMMANDS)
def test_no_flag_of_a_setting_is_written_by_hand(command):
    """Every option of the command is a field's generated flag, or one of the few that are not settings."""
    fields = {f.name for f in setting_fields(COMMANDS[command])}
    others = {a.dest for a in subparser(command)._actions} - fields
    assert others <= NOT_SETTINGS, f"{command} has hand-written options {sorted(others - NOT_SETTINGS)}"


def test_defaults_are_written_once():
    """A run built from flags alone has exactly the dataclass's defaults: no flag brings a default of its own."""
    args = build_parser().parse_args(["finetune", "--task", "t", "--out", "o", "--method", "lora", "--model", "m"])
    cfg = build_config(FinetuneConfig, None, flag_values(args, FinetuneConfig))
    assert cfg == FinetuneConfig(task="t", out="o", method="lora", model="m")
    args = build_parser().parse_args(["instruct", "--train", "t.jsonl", "--model", "m", "--out", "o", "--method", "lora"])
    assert build_config(InstructConfig, None, flag_values(args, InstructConfig)) == InstructConfig(train="t.jsonl", model="m",
                                                                                                    out="o", method="lora")


def test_one_name_for_the_lora_rank_everywhere_and_the_old_spellings_still_read(tmp_path):
    for cls in (PretrainConfig, FinetuneConfig, InstructConfig):
        assert "lora_rank" in {f.name for f in setting_fields(cls)} and "rank" not in {f.name for f in setting_fields(cls)}
    args = build_parser().parse_args(["pretrain", "--rank", "4", "--model", "m", "--domain", "a=x.txt", "--out", "o"])
    assert flag_values(args, PretrainConfig)["lora_rank"] == 4  # the old flag, an alias
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text("rank: 3\nmlm_probability: 0.2\n")
    cfg = build_config(PretrainConfig, str(old_yaml), {"model": "m", "domains": {"a": "x.txt"}, "out": "o"})
    assert (cfg.lora_rank, cfg.mlm_probability) == (3, 0.2)
    both = tmp_path / "both.yaml"
    both.write_text("rank: 3\nlora_rank: 4\n")
    with pytest.raises(Exception, match="both 'rank' and 'lora_rank'"):
        build_config(PretrainConfig, str(both), {"model": "m", "domains": {"a": "x.txt"}, "out": "o"})
    # a run record of before the rename: its rank is compared as lora_rank
    recorded = {**PretrainConfig(model="m", domains={"a": "x.txt"}, out="o").to_dict(), "rank": 8}
    del recorded["lora_rank"]
    assert changed_settings(recorded, PretrainConfig(model="m", domains={"a": "x.txt"}, out="o")) == []
    assert changed_settings(recorded, PretrainConfig(model="m", domains={"a": "x.txt"}, out="o", lora_rank=4)) == ["lora_rank"]


def test_mlm_probability_has_a_flag():
    args = build_parser().parse_args(["pretrain", "--mlm-probability", "0.3"])
    assert flag_values(args, PretrainConfig)["mlm_probability"] == 0.3


def test_repeated_and_listed_flags_read_as_their_settings():
    args = build_parser().parse_args(["pretrain", "--domain", "a=x.txt", "--domain", "b=y.txt", "--target-modules", "q_proj, v_proj"])
    values = flag_values(args, PretrainConfig)
    assert values["domains"] == {"a": "x.txt", "b": "y.txt"} and values["target_modules"] == ["q_proj", "v_proj"]
    assert flag_values(build_parser().parse_args(["pretrain", "--target-modules", ".*proj"]), PretrainConfig)["target_modules"] == ".*proj"
    args = build_parser().parse_args(["instruct", "--adapter", "p1", "--adapter", "p2", "--domains", "a,b"])
    assert flag_values(args, InstructConfig)["adapters"] == ["p1", "p2"] and flag_values(args, InstructConfig)["domains"] == ["a", "b"]
    args = build_parser().parse_args(["finetune", "--mix-task", "t1", "--mix-task", "t2", "--no-score-test"])
    assert flag_values(args, FinetuneConfig)["mix_tasks"] == ["t1", "t2"] and flag_values(args, FinetuneConfig)["score_test"] is False
