"""Every YAML file in configs/ loads with the reader its command uses, and a comparison's every job validates: a
config a user is told to run must not fail on a key or value after hours of other jobs."""

import sys
from pathlib import Path

import pytest

from domix.comparison.config import CompareConfig
from domix.comparison.run import plan
from domix.finetuning.config import FinetuneConfig
from domix.pretraining.config import PretrainConfig
from domix.settings import build_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
DATA = ROOT.parent / "shared" / "data"


def test_every_shipped_config_is_tested_here():
    known = ("compare-", "commonsense", "demo-pretrain", "demo-finetune")
    assert CONFIGS and all(c.name.startswith(known) for c in CONFIGS), [c.name for c in CONFIGS]


# configs that read samples their header's command writes first (benchmarks/commonsense_data.py's arguments): not shipped
GENERATED = {"compare-commonsense-8b.yaml": ["--train-sample", "10000", "--adapter-sample", "900", "--test-sample", "3270",
                                            "--out", "runs/commonsense-8b/data"]}


@pytest.mark.parametrize("path", [c for c in CONFIGS if c.name.startswith("compare-")], ids=lambda p: p.name)
def test_a_comparison_config_plans_jobs_that_validate(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # the configs name paths from the repository's root, as their commands are run
    if path.name in GENERATED:  # its samples drawn as its header says, in a root of their own
        if not (DATA / "commonsense").is_dir():
            pytest.skip("../shared/data/commonsense is not here")
        sys.path.insert(0, str(ROOT / "benchmarks"))
        try:
            from commonsense_data import main
        finally:
            sys.path.remove(str(ROOT / "benchmarks"))
        monkeypatch.chdir(tmp_path)
        assert main(GENERATED[path.name]) == 0
        header = " ".join(path.read_text().split("\nmodel:")[0].replace("\\\n#", " ").split())  # its lines joined
        assert " ".join(GENERATED[path.name]) in header  # the command the header gives
    cfg = CompareConfig.from_yaml(path)
    jobs = plan(cfg)
    assert any(j.role in ("selection", "test") for j in jobs)  # a row trains on a task (finetune, or instruct)
    for job in jobs:
        job.config().validate()


def test_the_demo_configs_load_as_make_demo_runs_them(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert build_config(PretrainConfig, "configs/demo-pretrain.yaml", {}).domains
    for method in ("domix", "lora_fa", "lora"):
        build_config(FinetuneConfig, "configs/demo-finetune.yaml", {"method": method, "out": "runs/x"})


@pytest.mark.skipif(not (DATA / "commonsense").is_dir(), reason="../shared/data/commonsense is not here")
@pytest.mark.parametrize("path", [c for c in CONFIGS if c.name.startswith("commonsense")], ids=lambda p: p.name)
def test_a_commonsense_config_loads_and_its_samples_fit_the_data(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from commonsense import CommonsenseConfig, main
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert CommonsenseConfig.from_yaml(path).rows
    monkeypatch.setattr(sys, "argv", ["commonsense.py", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    main()  # the dry run draws nothing but checks that every sample fits the sets it is drawn from
