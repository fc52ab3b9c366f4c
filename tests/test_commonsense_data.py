"""The shipped commonsense samples (data/commonsense/) against the data pack they are drawn from, read here without the
sampling code: every record is the pack's, the mixture and the adapters share none, the mixture's parts are the
largest-remainder shares of the sets' sizes, and the script draws exactly these files again."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT.parent / "shared" / "data" / "commonsense"
SHIPPED = ROOT / "data" / "commonsense"
SPEC = importlib.util.spec_from_file_location("commonsense_data", ROOT / "benchmarks" / "commonsense_data.py")
pytestmark = pytest.mark.skipif(not PACK.is_dir(), reason="the data pack's commonsense folder is not beside the repository")


def key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def test_the_shipped_samples_are_the_packs_records_apart_and_in_proportion():
    settings = json.loads((SHIPPED / "samples.json").read_text())["settings"]
    train = {name: [key(r) for r in json.loads((PACK / name / "train.json").read_text())] for name in settings["train_sets"]}
    mixture = [key(r) for r in json.loads((SHIPPED / "mixture.json").read_text())]
    assert len(mixture) == len(set(mixture)) == settings["train_sample"]
    # each set's part: the largest-remainder shares of train_sample over the sets' sizes, counted here by hand
    sizes = {n: len(r) for n, r in train.items()}
    exact = {n: settings["train_sample"] * s / sum(sizes.values()) for n, s in sizes.items()}
    floors = {n: math.floor(v) for n, v in exact.items()}
    for n in sorted(exact, key=lambda n: floors[n] - exact[n])[: settings["train_sample"] - sum(floors.values())]:
        floors[n] += 1
    assert {n: sum(m in set(train[n]) for m in mixture) for n in train} == floors
    for adapter, sets in settings["adapters"].items():
        records = [key(r) for r in json.loads((SHIPPED / f"adapter-{adapter}.json").read_text())]
        pool = {r for s in sets for r in train[s]}
        assert len(records) == settings["adapter_sample"] and set(records) <= pool and not set(records) & set(mixture)
        lines = (SHIPPED / f"domain-{adapter}.txt").read_text().splitlines()
        assert len(lines) == len(records)
    for bench in settings["benchmarks"]:
        test = {key(r) for r in json.loads((PACK / bench / "test.json").read_text())}
        records = [key(r) for r in json.loads((SHIPPED / f"test-{bench}.json").read_text())]
        assert len(records) == min(settings["test_sample"], len(test)) and set(records) <= test


def test_the_script_draws_the_shipped_files_and_refuses_to_change_one(tmp_path, capsys):
    script = importlib.util.module_from_spec(SPEC)
    SPEC.loader.exec_module(script)
    assert script.main(["--check"]) == 0
    assert script.main(["--out", str(tmp_path)]) == 0 and script.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "test-obqa.json").write_text("[]\n")
    assert script.main(["--out", str(tmp_path)]) == 2
    assert "holds another sample than these settings draw" in capsys.readouterr().err
