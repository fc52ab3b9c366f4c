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


def test_the_reading_knows_a_constant_answer_from_knowledge_and_takes_the_floor_from_the_training_prior(tmp_path):
    """On hand-made samples and runs: the floor is the mixture's most frequent answer per set (chance without training
    records), a row answering one index always shows no signal, a row answering right is above it, BoolQ stays apart."""
    spec = importlib.util.spec_from_file_location("commonsense_reading", ROOT / "benchmarks" / "commonsense_reading.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def records(answers):
        return [{"instruction": f"q{i}", "input": "", "output": f"the correct answer is {a}", "answer": a} for i, a in enumerate(answers)]

    tests = {"boolq": ["true"] * 12 + ["false"] * 18, "obqa": ["answer1", "answer2", "answer3"] * 10,
             "piqa": ["solution1", "solution2"] * 15}
    mixture = records(["false", "false", "true"]) + records(["answer2"] * 3 + ["answer1"])
    (tmp_path / "mixture.json").write_text(json.dumps(mixture))
    (tmp_path / "samples.json").write_text(json.dumps({"from": {"mixture.json": {"boolq": [3, 9], "obqa": [4, 9]}}}))
    for bench, answers in tests.items():
        (tmp_path / f"test-{bench}.json").write_text(json.dumps(records(answers)))
    gold = {b: [int(a[-1]) - 1 if a[-1].isdigit() else int(a == "true") for a in answers] for b, answers in tests.items()}
    runs = []
    for seed in (1, 2):
        for bench, g in gold.items():
            for row, predicted in (("constant", [0] * len(g)), ("oracle", g)):
                kept = {"predicted": predicted, "predicted_norm": predicted, "gold": g}
                runs.append({"method": row, "task": bench, "seed": seed, "test_predictions": kept, "generate_predictions": kept})
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"tasks": list(tests), "methods": ["constant", "oracle"], "runs": runs}))
    assert script.main([str(out), "--data", str(tmp_path)]) == 0
    floor = script.prior_floor(tmp_path, list(tests))
    assert floor["obqa"] == {"answer": "answer2", "accuracy": 10 / 30, "from": "training prior"}
    assert floor["piqa"]["accuracy"] == 1 / 2 and floor["piqa"]["answer"] is None  # no training records: chance
    assert floor["boolq"]["answer"] == "false" and floor["boolq"]["accuracy"] == 18 / 30
    text = (out / "reading.md").read_text()
    rows = {line.split(" | ")[0].strip("| ") + " " + line.split(" | ")[1]: line for line in text.splitlines()
            if line.startswith("| ") and line.count(" | ") == 7}  # the main table's rows
    assert rows["constant loglikelihood: acc"].endswith("| no signal |") and "| 2 |" in rows["constant loglikelihood: acc"]
    assert "| 41.7 |" in rows["constant loglikelihood: acc"]  # obqa 10/30 and piqa 15/30 right by index 0, averaged
    assert rows["oracle generate: acc"].endswith("above its answer distribution, above the floor |")
    assert "| 100.0 | 41.7 |" in rows["oracle generate: acc"]  # the floor: obqa's prior 10/30 and piqa's chance 1/2
    assert "| constant | loglikelihood: acc | 60.0 | 0: 100% |" in text  # BoolQ apart: always "false", 18 of 30
