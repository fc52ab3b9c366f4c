"""benchmarks/commonsense.py end to end on the tiny Llama: samples, adapters, rows, both protocols, the report,
and a second run of the same command that reruns nothing; bad inputs are one line and exit 2."""

import importlib.util
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import WORDS

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("commonsense_bench", ROOT / "benchmarks" / "commonsense.py")
bench = sys.modules[SPEC.name] = importlib.util.module_from_spec(SPEC)  # dataclasses look their module up
SPEC.loader.exec_module(bench)

BENCHES = ["boolq", "piqa", "arc_e", "arc_c", "obqa"]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _record(kind: str, rng: random.Random) -> dict:
    """A record as LLM-Adapters writes them (instruction with its options and answer format, output, answer)."""
    if kind == "boolq":
        answer = rng.choice(["true", "false"])
        return {"instruction": f"Please answer the following question with true or false, question: {_words(rng, 6)}?\n\n"
                               "Answer format: true/false", "input": "", "output": f"the correct answer is {answer}", "answer": answer}
    word, n = ("solution", 2) if kind == "piqa" else ("answer", 4)
    options = (" " if word == "answer" else "\n\n").join(f"{word.capitalize()}{i}: {_words(rng, 3)}" for i in range(1, n + 1))
    answer = f"{word}{rng.randint(1, n)}"
    return {"instruction": f"Please choose the correct {'solution' if word == 'solution' else 'answer'} to the question: "
                           f"{_words(rng, 6)}\n\n{options}\n\nAnswer format: {'/'.join(f'{word}{i}' for i in range(1, n + 1))}",
            "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def _data(root: Path) -> Path:
    rng = random.Random(0)
    sizes = {"boolq": (12, 3), "piqa": (0, 3), "arc_e": (6, 3), "arc_c": (4, 3), "obqa": (8, 2)}  # obqa: fewer than test_sample
    for name, (train, test) in sizes.items():
        (root / name).mkdir(parents=True)
        kind = name if name in ("boolq", "piqa") else "arc"
        if train:
            (root / name / "train.json").write_text(json.dumps([_record(kind, rng) for _ in range(train)], indent=4))
        (root / name / "test.json").write_text(json.dumps([_record(kind, rng) for _ in range(test)], indent=4))
    return root


def _config(tmp_path: Path, tiny_llama: Path, **changes) -> Path:
    settings = {"model": str(tiny_llama), "out": str(tmp_path / "out"), "data": str(tmp_path / "data"),
                "train_sample": 12, "adapter_sample": 4, "test_sample": 3, "rank": 2, "lr": 5e-3, "epochs": 1, "batch_size": 4,
                "max_length": 96, "seed": 0, "rows": ["base", "lora", "dora", "domix", "cat", "lora_fa", "mode", "full"], "max_new_tokens": 4,
                "eval_batch_size": 4, "instruct": {"checkpoint_every": 1000},
                "pretrain": {"steps": 2, "batch_size": 2, "seq_len": 16, "mode_block_size": 1, "mode_expert_layers": 1}, **changes}
    path = tmp_path / f"commonsense-{len(list(tmp_path.glob('commonsense-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "commonsense.py"), *args], capture_output=True, text=True,
                          cwd=ROOT)


def _snapshot(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.name not in ("results.json", "report.md")}


def test_the_comparison_runs_reports_every_row_and_a_rerun_reruns_nothing(tiny_llama, tmp_path, capsys):
    _data(tmp_path / "data")
    config = _config(tmp_path, tiny_llama)
    assert bench.main([str(config)], in_process=True) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert list(rows) == ["base", "lora", "dora", "domix", "cat", "lora_fa", "mode", "full"]
    for name, row in rows.items():
        for protocol, metrics in (("loglikelihood", ("acc", "acc_norm")), ("generate", ("acc",))):
            for metric in metrics:
                values = row["eval"][protocol][metric]
                assert set(values) == {*BENCHES, "average"} and all(0 <= v <= 1 for v in values.values()), (name, protocol, metric)
        assert row["n"] == {"boolq": 3, "piqa": 3, "arc_e": 3, "arc_c": 3, "obqa": 2}  # obqa's test set holds 2
    for name in ("lora", "dora", "domix", "mode", "full"):
        assert rows[name]["trained"] and rows[name]["time_per_step_s"] > 0 and rows[name]["peak_memory_mb"] > 0
        assert set(rows[name]["vs_dora"]) == {"peak_memory", "time_per_step"}
    assert rows["dora"]["vs_dora"] == {"peak_memory": 1.0, "time_per_step": 1.0}
    assert rows["lora"]["lora_rank"] == rows["dora"]["lora_rank"] == 2 * (3 + 1)  # the rank domix composes
    assert not rows["base"]["trained"] and "vs_dora" not in rows["base"]
    # full: every weight trains, at its own rate (the config's lr is the adapters')
    total = rows["full"]["total_parameters"]
    assert rows["full"]["trainable_parameters"] == total and rows["full"]["lora_rank"] is None
    assert yaml.safe_load((out / "configs" / "rows" / "full.yaml").read_text())["lr"] == 2e-5
    assert set(results["adapters"]) == {"boolq", "arc", "obqa"} and results["adapters_total"]["steps"] > 0

    # the samples: in proportion, seeded, and the adapters' records apart from the mixture's
    samples = results["samples"]
    assert samples["mixture.json"] == {"records": 12, "from": {"boolq": [5, 12], "arc_e": [2, 6], "arc_c": [2, 4], "obqa": [3, 8]}}
    assert samples["adapter-arc.json"]["from"] == {"arc_e": [2, 6], "arc_c": [2, 4]} and samples["test-obqa.json"]["from"] == {"obqa": [2, 2]}
    mixture = {json.dumps(r) for r in json.loads((out / "data" / "mixture.json").read_text())}
    for adapter in ("boolq", "arc", "obqa"):
        assert not mixture & {json.dumps(r) for r in json.loads((out / "data" / f"adapter-{adapter}.json").read_text())}
    # domix composed the three adapters (named after them) and a fresh block
    record = json.loads((out / "rows" / "domix" / "result.json").read_text())
    assert [m["name"] for m in record["modules"]] == ["boolq", "arc", "obqa"]
    # mode: a gate over experts of each adapter sample's text (a record a line), trained first
    assert results["stores"]["mode"]["domains"] == ["arc", "boolq", "obqa"] and results["stores"]["mode"]["steps"] > 0
    lines = (out / "data" / "domain-arc.txt").read_text().splitlines()
    assert len(lines) == 4 and all("\n" not in line and "the correct answer is" in line for line in lines)
    record = json.loads((out / "rows" / "mode" / "result.json").read_text())
    assert record["mode"]["domains"] == ["arc", "boolq", "obqa"]

    # every trained row against DoRA, question by question, counted by hand from the details files
    dora_details = json.loads((out / "eval" / "dora.details.json").read_text())
    for name in ("base", "lora", "domix", "mode", "full"):
        mine = json.loads((out / "eval" / f"{name}.details.json").read_text())
        key = "obqa/generate"
        only_mine = sum(a["prediction"] == a["label"] and b["prediction"] != b["label"] for a, b in zip(mine[key], dora_details[key]))
        pair = results["paired"]["rows"][name]["generate"]["acc"]
        expected = rows[name]["eval"]["generate"]["acc"]["average"] - rows["dora"]["eval"]["generate"]["acc"]["average"]
        assert pair["difference"] == pytest.approx(expected, abs=1e-6) and pair["ci95"][0] <= pair["difference"] <= pair["ci95"][1]
        assert only_mine <= pair["only_this_right"] and set(results["paired"]["rows"][name]) == {"loglikelihood", "generate"}
    assert "dora" not in results["paired"]["rows"]
    # what the adapters add: the rows that compose them against lora_fa (their trainable shape without them), alone
    adapters = results["paired_adapters"]
    assert adapters["reference"] == "lora_fa" and set(adapters["rows"]) == {"domix", "cat"}
    mine, theirs = (json.loads((out / "eval" / f"{r}.details.json").read_text())["boolq/loglikelihood"] for r in ("cat", "lora_fa"))
    assert adapters["rows"]["cat"]["loglikelihood"]["acc"]["only_this_right"] >= sum(
        a["prediction"] == a["label"] and b["prediction"] != b["label"] for a, b in zip(mine, theirs))
    for name in BENCHES:  # the majority answer's accuracy, counted from the test sample
        answers = [r["answer"] for r in json.loads((out / "data" / f"test-{name}.json").read_text())]
        assert results["majority"][name] == max(answers.count(a) for a in answers) / len(answers)

    report = (out / "report.md").read_text()
    assert "**loglikelihood: acc**" in report and "**loglikelihood: acc_norm**" in report and "**generate: acc**" in report
    assert "obqa 2 of 2" in report and "vs DoRA" in report and "Training the adapters took" in report
    assert "## Against dora, question by question" in report and "| domix | generate: acc |" in report
    assert "## What the adapters add: the rows that compose them against lora_fa" in report
    assert report.count("| *majority answer* |") == 3  # loglikelihood acc and acc_norm, generate acc

    # the same command again, as a user runs it: every step (samples, 3 adapters, a store, 7 rows, 8 evaluations) is finished, nothing is rerun or rewritten
    capsys.readouterr()
    before = _snapshot(out)
    again = _cli(str(config))
    assert again.returncode == 0, again.stderr
    assert "20 steps, 20 already finished" in again.stdout
    assert _snapshot(out) == before and not (out / "logs").exists()  # the first run was in-process: no job ever ran as a process
    assert json.loads((out / "results.json").read_text())["rows"] == rows

    # settings that would draw another sample, train or score otherwise are refused before anything runs
    for changes, message in [({"test_sample": 2}, "holds another sample"), ({"lr": 1e-3}, "other settings (lr)"),
                             ({"max_new_tokens": 3}, "scored with other settings")]:
        assert bench.main([str(_config(tmp_path, tiny_llama, **changes))]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
    assert _snapshot(out) == before

    # --records: what to commit or carry; on a new machine (the out folder gone) the records alone resume: nothing reruns
    records = tmp_path / "records"
    assert bench.main([str(config), "--records", str(records)]) == 0
    kept = {str(p.relative_to(records)) for p in records.rglob("*") if p.is_file()}
    assert {"results.json", "report.md", "job_times.json", "eval/domix.json", "eval/domix.details.json", "rows/domix/result.json",
            "rows/domix/run.json", "modules/arc/adapter_model.safetensors", "stores/mode/run.json", "stores/mode/arc/domix_manifest.json",
            "configs/rows/full.yaml"} <= kept
    assert not any("checkpoint" in k or k.endswith(".progress.json") or "/model/" in k or k.endswith("mode_experts.safetensors")
                   for k in kept)
    assert json.loads((records / "results.json").read_text())["rows"] == rows
    # the reading: every row's signal over the benchmarks but BoolQ, and BoolQ apart; --report-only writes it again from records
    written = json.loads((records / "results.json").read_text())
    assert set(written["signal"]) == set(rows) and set(written["prior_floor"]) == set(BENCHES)
    assert all("boolq" in e for e in written["signal"]["lora"]["generate"].values())
    assert "## What it shows" in (records / "report.md").read_text() and "**BoolQ apart.**" in (records / "report.md").read_text()
    (records / "report.md").write_text("stale")
    assert bench.main([str(config), "--report-only", str(records)]) == 0
    again_written = json.loads((records / "results.json").read_text())
    assert again_written == written and "## What it shows" in (records / "report.md").read_text()  # the run's out and folders kept
    shutil.move(out, tmp_path / "lost")
    shutil.copytree(records, out)
    again = _cli(str(config))
    assert again.returncode == 0, again.stderr
    assert "20 steps, 19 already finished" in again.stdout  # the samples are drawn again, the same
    assert json.loads((out / "results.json").read_text())["rows"] == rows

    # a run under way: a store whose row is unfinished travels without its run.json (its weights stay behind), so it
    # trains again where the records land; the report says what is not finished
    running = tmp_path / "lost" / "rows" / "mode" / "run.json"
    running.write_text(json.dumps({**json.loads(running.read_text()), "status": "running"}))
    shutil.rmtree(records)
    shutil.move(out, tmp_path / "restored")
    shutil.move(tmp_path / "lost", out)
    assert bench.main([str(config), "--records", str(records)]) == 0
    assert not (records / "stores" / "mode" / "run.json").exists() and (records / "stores" / "mode" / "arc" / "domix_manifest.json").is_file()
    assert not (records / "rows" / "mode" / "run.json").exists()  # a run under way: its checkpoint does not travel
    partial = json.loads((records / "results.json").read_text())
    assert partial["unfinished"] == ["rows/mode", "eval/mode"]  # mode's evaluation scored a training not finished
    assert "mode" not in partial["rows"] and "Not finished yet" in (records / "report.md").read_text()


def test_bad_inputs_are_one_line_and_exit_2(tiny_llama, tmp_path, capsys):
    _data(tmp_path / "data")
    for changes, message in [({"data": str(tmp_path / "nowhere")}, "data folder"),
                             ({"rows": ["base", "lorra"]}, "unknown row 'lorra'"),
                             ({"protocols": ["generate", "greedy"]}, "protocols"),
                             ({"instruct": {"lr": 1.0}}, "reserved"),
                             ({"train_sample": "many"}, "train_sample")]:
        assert bench.main([str(_config(tmp_path, tiny_llama, **changes))]) == 2, changes
        err = capsys.readouterr().err.strip()
        assert err.startswith("commonsense: error: ") and "\n" not in err and message in err, err
    (tmp_path / "data" / "piqa" / "test.json").unlink()
    assert bench.main([str(_config(tmp_path, tiny_llama))]) == 2
    assert "piqa/test.json" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nrank_of_bridge: 3\n")
    done = _cli(str(bad))  # the command line itself: exit status 2, one line, no traceback
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "rank_of_bridge" in done.stderr
    assert not (tmp_path / "out").exists()


def _details(correct: list[list[int]], protocol: str = "generate") -> dict:
    return {f"b{i}/{protocol}": [{"label": 0, "prediction": 1 - c, "prediction_norm": 1 - c} for c in bench]
            for i, bench in enumerate(correct)}


def test_paired_differences_against_the_formula():
    rng = random.Random(1)
    ref = [[rng.random() < 0.5 for _ in range(400)], [rng.random() < 0.3 for _ in range(100)]]
    row = [[rng.random() < 0.6 for _ in range(400)], [rng.random() < 0.3 for _ in range(100)]]
    details = {"dora": _details(ref), "x": _details(row), "same": _details(ref)}
    out = bench.paired(details, "dora", ["b0", "b1"], ["generate"])
    assert set(out) == {"x", "same"} and set(out["x"]["generate"]) == {"acc"}  # unanswered is no accuracy
    same = out["same"]["generate"]["acc"]
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0], "only_this_right": 0, "only_reference_right": 0}
    p = out["x"]["generate"]["acc"]
    d = [[a - b for a, b in zip(x, y)] for x, y in zip(row, ref)]
    means = [sum(v) / len(v) for v in d]
    assert p["difference"] == pytest.approx(sum(means) / 2, abs=1e-6)
    assert p["only_this_right"] == sum(v == 1 for b in d for v in b) and p["only_reference_right"] == sum(v == -1 for b in d for v in b)
    # the bootstrap interval against the normal approximation of the mean of two independent benchmark means
    var = sum(sum((v - m) ** 2 for v in b) / (len(b) - 1) / len(b) for b, m in zip(d, means)) / 4
    half = 1.96 * var ** 0.5
    assert p["ci95"][0] == pytest.approx(p["difference"] - half, abs=0.008)
    assert p["ci95"][1] == pytest.approx(p["difference"] + half, abs=0.008)


def test_the_prior_floor_reads_the_training_sample_and_a_constant_answer_shows_no_signal():
    samples = {"mixture.json": {"from": {"arc_e": [3, 10], "obqa": [2, 5]},
                                "records": [{"answer": "answer2"}, {"answer": "answer2"}, {"answer": "answer1"},
                                            {"answer": "answer4"}, {"answer": "answer4"}]},
               "test-arc_e.json": {"records": [{"answer": "answer2"}, {"answer": "answer1"}, {"answer": "answer2"}, {"answer": "answer3"}]},
               "test-obqa.json": {"records": [{"answer": "answer1"}, {"answer": "answer4"}]},
               "test-piqa.json": {"records": [{"answer": "solution1"}, {"answer": "solution2"}, {"answer": "solution1"}]}}
    floor = bench.prior_floor(samples, ["arc_e", "obqa", "piqa"])
    assert floor["arc_e"] == {"answer": "answer2", "accuracy": 0.5, "from": "training prior"}  # 2 of its 4 test answers
    assert floor["obqa"]["answer"] == "answer4" and floor["obqa"]["accuracy"] == 0.5
    assert floor["piqa"]["accuracy"] == 0.5 and floor["piqa"]["answer"] is None  # no training records: chance, 1/2
    # a row that always answers the first choice: whatever question gets it, the same score: no signal
    constant = {f"{b}/generate": [{"label": label, "prediction": 0} for label in (0, 1, 0, 2)] for b in ("arc_e", "obqa")}
    shown = bench.signal({"row": constant}, ["arc_e", "obqa"], ["generate"], floor)["row"]["generate"]["acc"]
    assert shown["observed"] == 0.5 and shown["p"] == 1.0 and shown["reading"] == "no signal" and shown["floor"] == 0.5
