"""--recipe: named presets of the published settings, under a YAML file and the flags."""

import pytest

from domix.cli import main
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.llm.config import InstructConfig
from domix.pretraining.config import PretrainConfig
from domix.settings import build_config


def test_the_paper_recipe_sets_the_published_values_and_yaml_and_flags_win(tmp_path):
    common = {"task": "t", "modules": "m", "out": "o"}
    domix = build_config(FinetuneConfig, None, {**common, "recipe": "paper"})
    assert (domix.lr, domix.batch_size, domix.weight_decay, domix.method_options.p_weight_decay) == (3e-5, 16, 0.01, 0.01)
    assert (domix.method_options.p_init, domix.method_options.p_lr, domix.method_options.b_lr) == ("scaled_identity", None, None)  # P = I/Σr; P and B at the run's lr
    assert FinetuneConfig(**common).validate().weight_decay == 0.0  # without the recipe: domix's default
    mixda = build_config(FinetuneConfig, None, {**common, "recipe": "paper", "method": "mixda"})
    assert (mixda.lr, mixda.weight_decay) == (1e-4, 0.01)
    yaml = tmp_path / "s.yaml"
    yaml.write_text("recipe: paper\nmethod: mixda\nweight_decay: 0.2\n")
    both = build_config(FinetuneConfig, str(yaml), {**common, "lr": 5e-4})
    assert (both.lr, both.weight_decay, both.recipe) == (5e-4, 0.2, "paper")  # the flag, the YAML file, over the preset
    stage1 = build_config(PretrainConfig, None, {"model": "x", "domains": {"a": "p"}, "out": "o", "method": "mixda",
                                                 "general": "g", "recipe": "paper"})
    assert (stage1.lr, stage1.weight_decay) == (5e-4, 0.05)
    llm = build_config(InstructConfig, None, {"train": "t.jsonl", "modules": "m", "out": "o", "recipe": "paper"})
    assert (llm.lr, llm.epochs, llm.warmup_steps) == (2e-4, 3, 100)
    assert (llm.method_options.p_init, llm.method_options.p_lr, llm.method_options.p_weight_decay, llm.method_options.b_lr) == ("scaled_identity", "10x", 0.0, None)  # finetune_sepLR.py


def test_a_recipe_a_method_does_not_have_is_one_line(tmp_path, capsys):
    with pytest.raises(DomixError, match="method domix has no recipe 'fast' for finetune; it has paper"):
        build_config(FinetuneConfig, None, {"task": "t", "modules": "m", "out": "o", "recipe": "fast"})
    assert main(["finetune", "--method", "lora", "--model", "x", "--task", "t", "--out", str(tmp_path / "o"), "--recipe", "paper"]) == 2
    assert "method lora has no recipe 'paper' for finetune; it has none" in capsys.readouterr().err


def test_a_comparison_job_gets_its_recipe_as_its_command_does(tmp_path, tiny_llama, corpora, task):
    from domix.comparison.config import CompareConfig
    from domix.comparison.run import plan

    from test_compare import write_config

    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["domix"],
                                               finetune={"recipe": "paper", "epochs": 1, "max_length": 32}))
    job = next(j for j in plan(cfg) if j.kind == "finetune")
    config = job.config()
    assert (config.lr, config.weight_decay, config.epochs) == (3e-5, 0.01, 1)
