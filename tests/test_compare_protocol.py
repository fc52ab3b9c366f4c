"""The fair-comparison protocol of domix compare: equal budgets declared before any run, selection on dev by runs
that never read the test split, fresh test seeds, and paired differences with bootstrap intervals."""

import json
import shutil

import numpy as np
import pytest
import yaml

from domix.comparison.config import CompareConfig
from domix.comparison.run import compare, plan
from domix.comparison.stats import paired, reference_row, scores
from domix.errors import DomixError

from conftest import write_compare_config

SEARCH = {"seeds": [1], "space": {"lr": [5.0e-3, "2e-2"]}}  # "2e-2": YAML reads it as text; the search converts it


def write_config(path, tiny_llama, corpora, task, **kw):
    """head, lora and domix searched over SEARCH, tested at seeds 2, 3 and 4, two epochs."""
    return write_compare_config(path, tiny_llama, corpora, task, **{
        "methods": ["head", "lora", "domix"], "seeds": [2, 3, 4], "search": SEARCH,
        "finetune": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "max_length": 32, "dtype": "float64"}, **kw})


def test_a_search_plans_every_method_the_same_configurations_at_the_selection_seeds(tmp_path, tiny_llama, corpora, task):
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, search={
        "seeds": [1, 5], "space": {"lr": [1e-3, 3e-3]},
        "methods": {"domix": [{"lr": 1e-3, "p_lr": "10x"}, {"lr": 3e-3, "p_lr": None}]}}))
    jobs = [j for j in plan(cfg) if j.kind == "finetune"]
    assert len(jobs) == 3 * 2 * 2  # methods x configurations x selection seeds; the test runs come after the choice
    assert all(j.settings["score_test"] is False and j.name.startswith("search/") for j in jobs)
    assert {j.settings["seed"] for j in jobs} == {1, 5}
    domix = sorted(j.name for j in jobs if j.info["method"] == "domix")
    assert domix == ["search/domix/topics/lr=0.001,p_lr=10x/seed1", "search/domix/topics/lr=0.001,p_lr=10x/seed5",
                     "search/domix/topics/lr=0.003,p_lr=none/seed1", "search/domix/topics/lr=0.003,p_lr=none/seed5"]
    lora = next(j for j in jobs if j.name == "search/lora/topics/lr=0.003/seed5")
    assert lora.settings["lr"] == 3e-3 and lora.config().lr == 3e-3


@pytest.mark.parametrize("search, extra, message", [
    ({"seeds": [1], "space": {"lr": [1e-3, 3e-3]}, "methods": {"domix": {"lr": [1e-3, 3e-3], "p_lr": ["10x", None]}}}, {},
     r"unequal budgets \(head 2, lora 2, domix 4 configurations per task\)"),
    ({"seeds": [1, 2], "space": {"lr": [1e-3]}}, {}, r"seed\(s\) \[2\] are both selection seeds"),
    ({"seeds": [1], "space": {"lr": [1e-3]}}, {"seeds": [2, 3]}, "3 or more fresh seeds"),
    ({"seeds": [1], "space": {"lr": [1e-3]}}, {"method_seeds": {"head": [7]}}, r"\['head'\] have fewer"),
    ({"seeds": [1], "space": {"seed": [1, 2]}}, {}, "sets \\['seed'\\], which a search may not vary"),
    ({"seeds": [1], "space": {"score_test": [True]}}, {}, "which a search may not vary"),
    ({"seeds": [1], "space": {"lr": []}}, {}, "search.space.lr must be a non-empty list"),
    ({"seeds": [1], "space": {"lr": [1e-3, 1e-3]}}, {}, "gives the configuration lr=0.001 more than once"),
    ({"seeds": [], "space": {"lr": [1e-3]}}, {}, "search.seeds must be a non-empty list"),
    ({"seeds": [1], "space": {"lr": ["fast"]}}, {}, "setting 'lr' in search.space is 'fast', which is not a number"),
    ({"seeds": [1], "space": {"lr": [1e-3]}, "methods": {"dora": {"lr": [1e-3]}}}, {}, "search.methods names 'dora'"),
    ({"seeds": [1], "budget": 3}, {}, "search in .* has unknown keys \\['budget'\\]"),
    ({"seeds": [1], "space": {"lr": [1e-3]}}, {"reference": "full"}, "reference 'full' is not among"),
])
def test_unequal_or_leaky_searches_are_refused_before_anything_runs(tmp_path, tiny_llama, corpora, task, search, extra, message):
    with pytest.raises(DomixError, match=message):
        CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, search=search, **extra))
    assert not (tmp_path / "out").exists()


def test_the_protocol_chooses_on_dev_without_reading_test_then_scores_fresh_seeds(tmp_path, tiny_llama, corpora, task, capsys):
    # the task's test split is unreadable during the selection runs: they must all finish without it
    own_task = tmp_path / "task"
    shutil.copytree(task, own_task)
    good_test = (own_task / "test.jsonl").read_text()
    (own_task / "test.jsonl").write_text("this is not json\n")
    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, tasks={"topics": {"path": str(own_task), "domain": "food"}})
    with pytest.raises(DomixError, match="test.jsonl"):
        compare(CompareConfig.from_yaml(config), in_process=True)
    out = tmp_path / "out"
    selection = sorted((out / "search").rglob("result.json"))
    assert len(selection) == 3 * 2  # every selection run finished with the test split unreadable
    for path in selection:
        record = json.loads(path.read_text())
        assert record["test"] is None and record["test_predictions"] is None and "test" not in record["majority"]
        assert json.loads((path.parent / "run.json").read_text())["test"] is None
    assert "test accuracy" not in capsys.readouterr().out

    (own_task / "test.jsonl").write_text(good_test)
    results = compare(CompareConfig.from_yaml(config), in_process=True)  # resumes: the selection is reused
    assert "7 jobs, 7 already finished; 6 of them selection runs (dev only), then 9 test runs" in capsys.readouterr().out
    assert sorted({r["seed"] for r in results["runs"]}) == [2, 3, 4] and len(results["runs"]) == 3 * 3
    # the choice, recomputed by hand from the selection records: the highest mean dev macro-F1 per method
    for choice in results["search"]["choices"]:
        folder = out / "search" / choice["method"] / "topics"
        dev = {p.name: json.loads((p / "seed1" / "result.json").read_text())["dev"]["macro_f1"] for p in folder.iterdir()}
        assert choice["chosen"] == max(dev, key=lambda k: (dev[k], k == "lr=0.005"))  # a tie goes to the first declared
        assert [c["dev"] for c in choice["candidates"]] == [[dev["lr=0.005"]], [dev["lr=0.02"]]]
        test_runs = [r for r in results["runs"] if r["method"] == choice["method"]]
        assert all(r["point"] == choice["chosen"] for r in test_runs)
        config_file = out / "configs" / "finetune" / choice["method"] / "topics" / "seed2.yaml"
        assert yaml.safe_load(config_file.read_text())["lr"] == choice["point"]["lr"]
    assert all(r["test_predictions"] and len(r["test_predictions"]["predicted"]) == 32 for r in results["runs"])
    # the reference: named nowhere, so the best mean dev score among head and lora (no domain pre-training)
    ref = results["paired"]
    dev = {m: np.mean([r["dev"]["macro_f1"] for r in results["runs"] if r["method"] == m]) for m in ("head", "lora")}
    assert ref["reference"] == max(dev, key=dev.get)
    other = next(m for m in ("head", "lora", "domix") if m != ref["reference"])
    assert set(ref["macro_f1"]) == {"head", "lora", "domix"} - {ref["reference"]}
    mine = ref["macro_f1"][other]["tasks"]["topics"]
    by_seed = {r["seed"]: r["test"]["macro_f1"] for r in results["runs"] if r["method"] == ref["reference"]}
    expected = np.mean([r["test"]["macro_f1"] - by_seed[r["seed"]] for r in results["runs"] if r["method"] == other])
    assert mine["mean"] == pytest.approx(expected) and mine["pairs"] == 3 and mine["resampled"] == "seeds and test examples"
    report = (out / "report.md").read_text()
    assert f"## Paired differences against {ref['reference']}" in report and "## Selection on dev (the test split never read)" in report
    assert "lr=0.005: " in report and "Cost: 6 selection runs" in report


def test_rows_added_to_a_finished_search_run_only_their_own_jobs(tmp_path, tiny_llama, corpora, task, capsys):
    """How MixDA and MoDE join a finished comparison: the same config with two more methods (their stores trained by
    the comparison itself, MixDA on its general text) runs only the new rows' jobs, under the same search and the
    fair configs' speed settings (bfloat16 autocast, length-grouped batches); the finished rows' records stay as
    they were, and the new rows are chosen on dev, tested at the fresh seeds and paired against the reference."""
    fast = {"epochs": 2, "batch_size": 16, "lr": 5e-3, "max_length": 32, "autocast": "bfloat16", "group_by_length": True}
    first = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head", "lora"], finetune=fast)
    compare(CompareConfig.from_yaml(first), in_process=True)
    out = tmp_path / "out"
    before = {p: p.read_text() for p in out.rglob("result.json")}
    assert len(before) == 2 * 2 + 2 * 3

    capsys.readouterr()
    more = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head", "lora", "mixda", "mode"], finetune=fast,
                        general=str(corpora["bio"]), pretrain_method_settings={"mode": {"mode_block_size": 1, "mode_blocks": [1]}})
    results = compare(CompareConfig.from_yaml(more), in_process=True)
    printed = capsys.readouterr().out
    assert "10 jobs, 4 already finished; 8 of them selection runs (dev only), then 12 test runs" in printed
    assert all(p.read_text() == text for p, text in before.items())  # the finished rows were reused, not run again
    for method in ("mixda", "mode"):
        assert json.loads((out / "pretrain" / method / "run.json").read_text())["status"] == "finished"
        selection = sorted((out / "search" / method).rglob("result.json"))
        assert len(selection) == 2 and all(json.loads(p.read_text())["test"] is None for p in selection)
        runs = [r for r in results["runs"] if r["method"] == method]
        assert sorted(r["seed"] for r in runs) == [2, 3, 4] and all(0 <= r["test"]["macro_f1"] <= 1 for r in runs)
        choice = next(c for c in results["search"]["choices"] if c["method"] == method)
        assert all(r["point"] == choice["chosen"] for r in runs)
    assert {"mixda", "mode"} <= set(results["paired"]["macro_f1"])
    record = json.loads((out / "finetune" / "mode" / "topics" / "seed2" / "run.json").read_text())
    assert record["config"]["autocast"] == "bfloat16" and record["config"]["group_by_length"] is True


def test_an_instruction_task_runs_domix_instruct_under_the_same_protocol(tmp_path, tiny_llama, corpora, task, capsys):
    """A task of kind instruction: its jobs are domix instruct --task (the causal LM answering with the label word), chosen on
    dev macro-F1 by runs that never read test, tested at the fresh seeds in both protocols, paired like any other row;
    a method with no instruct form is refused before anything runs."""
    instruction = {"topics": {"path": str(task), "domain": "food", "kind": "instruction", "instruct": {"eval_limit": 16}}}
    common = dict(tasks=instruction, instruct={"epochs": 1, "batch_size": 16, "lr": 5e-3, "max_length": 64, "dtype": "float64"})
    with pytest.raises(DomixError, match=r"an instruction task \(domix instruct\), which methods \['head'\] do not run"):
        CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, **common))
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["base", "lora", "domix"],
                                               **common))
    jobs = plan(cfg)
    selection = [j for j in jobs if j.info.get("selection")]
    # base trains nothing: one point, nothing to tune, outside the equal budget of the others (2 each)
    assert sorted(j.name for j in selection if j.info["method"] == "base") == ["search/base/topics/default/seed1"]
    assert len(selection) == 1 + 2 + 2 and cfg.search.budget(cfg.methods) == 2
    assert {j.kind for j in selection} == {"instruct"} and all(j.settings["score_test"] is False for j in selection)
    assert all(type(j.config()).__name__ == "InstructConfig" and j.config().task == str(task) for j in selection)

    results = compare(cfg, in_process=True)
    out = tmp_path / "out"
    for path in (out / "search").rglob("result.json"):
        record = json.loads(path.read_text())
        assert record["test"] is None and record["test_generate"] is None and record["dev"]["macro_f1"] >= 0
    assert len(results["runs"]) == 3 * 3 and {r["seed"] for r in results["runs"]} == {2, 3, 4}
    base = [r["test"]["macro_f1"] for r in results["runs"] if r["method"] == "base"]
    assert len(set(base)) == 1  # the model as it is, whatever the seed
    for run in results["runs"]:
        assert 0 <= run["test"]["macro_f1"] <= 1 and 0 <= run["test_generate"]["unanswered"] <= 1
        assert len(run["test_predictions"]["predicted"]) == 16
    config_file = out / "configs" / "finetune" / "lora" / "topics" / "seed2.yaml"
    assert yaml.safe_load(config_file.read_text())["task"] == str(task)  # what domix instruct --config reads
    assert set(results["paired"]["macro_f1"]) == {"base", "lora", "domix"} - {results["paired"]["reference"]}
    report = (out / "report.md").read_text()
    assert "## Paired differences against" in report and "## Generated answers" in report


def test_macro_f1_of_resamples_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    predicted, gold = rng.integers(0, 5, (50, 40)), rng.integers(0, 4, (50, 40))
    predicted[3] = 0  # a row that predicts one label only
    ours = scores(predicted, gold, "macro_f1")
    for i in range(50):
        present = np.union1d(predicted[i], gold[i])
        assert ours[i] == pytest.approx(f1_score(gold[i], predicted[i], labels=present, average="macro"))
    assert np.allclose(scores(predicted, gold, "accuracy"), (predicted == gold).mean(1))


def _run(method, seed, predicted, gold, metric="accuracy"):
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    score = float(scores(predicted[None], gold[None], metric)[0])
    return {"method": method, "task": "t", "seed": seed, "test": {metric: score},
            "test_predictions": {"predicted": predicted.tolist(), "gold": gold.tolist()}}


def test_one_seed_accuracy_interval_matches_the_normal_approximation_of_the_paired_difference():
    rng = np.random.default_rng(2)
    gold = rng.integers(0, 2, 2000)
    a = np.where(rng.random(2000) < 0.75, gold, 1 - gold)
    b = np.where(rng.random(2000) < 0.70, gold, 1 - gold)
    result = paired([_run("a", 1, a, gold), _run("b", 1, b, gold)], "a", "b", ["t"], "accuracy")["tasks"]["t"]
    d = (a == gold).astype(float) - (b == gold).astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert result["mean"] == pytest.approx(d.mean())
    assert result["low"] == pytest.approx(d.mean() - half, abs=0.006) and result["high"] == pytest.approx(d.mean() + half, abs=0.006)
    assert not result["within_noise"] and result["positive"] == 1


def test_runs_without_predictions_are_resampled_over_seeds_only():
    runs = [{"method": m, "task": "t", "seed": s, "test": {"accuracy": v}}
            for m, values in (("a", (0.60, 0.70, 0.62)), ("b", (0.61, 0.60, 0.60))) for s, v in zip((1, 2, 3), values)]
    result = paired(runs, "a", "b", ["t"], "accuracy")["tasks"]["t"]
    differences = np.array([0.60 - 0.61, 0.70 - 0.60, 0.62 - 0.60])
    # every one of the 27 equally likely resamples of three seeds, enumerated
    means = np.array([differences[[i, j, k]].mean() for i in range(3) for j in range(3) for k in range(3)])
    assert result["mean"] == pytest.approx(differences.mean()) and result["resampled"] == "seeds only"
    assert means.min() <= result["low"] <= np.quantile(means, 0.1) and np.quantile(means, 0.9) <= result["high"] <= means.max()
    assert result["positive"] == 2 and result["pairs"] == 3 and result["within_noise"]


def test_the_pooled_difference_averages_the_tasks_and_only_pairs_shared_seeds():
    gold = [0, 1] * 50
    runs = [_run("a", 1, gold, gold), _run("b", 1, [0] * 100, gold), _run("a", 9, gold, gold)]
    runs += [{**r, "task": "u"} for r in (_run("a", 1, [1] * 100, gold), _run("b", 1, gold, gold))]
    result = paired(runs, "a", "b", ["t", "u"], "accuracy")
    assert result["tasks"]["t"]["pairs"] == 1  # seed 9 has no reference run
    assert result["pooled"]["mean"] == pytest.approx((0.5 + -0.5) / 2) and result["pooled"]["pairs"] == 2


def test_the_reference_is_chosen_on_dev_among_rows_without_domain_pretraining():
    runs = [{"method": m, "task": "t", "seed": 1, "dev": {"macro_f1": d}, "test": {"macro_f1": t}}
            for m, d, t in (("lora", 0.5, 0.9), ("lora_fa", 0.6, 0.1), ("domix", 0.9, 0.9))]
    results = {"methods": ["lora", "lora_fa", "domix"], "runs": runs}
    assert reference_row(results, None)["method"] == "lora_fa"  # dev decides, never test; domix has pre-training
    assert reference_row(results, "lora")["method"] == "lora"


def test_the_shuffle_test_keeps_each_benchmarks_answers_and_knows_a_prior_from_knowledge():
    from domix.comparison.stats import shuffle_test

    # two questions, answers swapped under half the permutations: shuffled mean 0.5, p about 0.5 for a right row
    two = shuffle_test([([0, 1], [0, 1])], permutations=4000)
    assert two["observed"] == 1.0 and two["shuffled"] == pytest.approx(0.5, abs=0.03) and two["p"] == pytest.approx(0.5, abs=0.03)
    # the same answer everywhere scores the same whatever the shuffle: no signal (p = 1); no answer is never right
    prior = shuffle_test([([1] * 30, [1] * 20 + [0] * 10), ([None] * 10, [0] * 10)])
    assert prior["observed"] == pytest.approx((20 / 30 + 0) / 2) and prior["shuffled"] == pytest.approx(prior["observed"])
    assert prior["p"] == 1.0
    # knowledge: 60 questions answered right, 3 answers evenly spread: shuffled accuracy about 1/3 (exactly 1/3 in expectation)
    gold = [i % 3 for i in range(60)]
    known = shuffle_test([(gold, gold)])
    assert known["observed"] == 1.0 and known["shuffled"] == pytest.approx(1 / 3, abs=0.01) and known["p"] < 0.001
    assert known["shuffled_range"][0] < 1 / 3 < known["shuffled_range"][1]


ADAPTED = {"topics": {"path": None, "domain": "food", "kind": "instruction", "instruct": {"eval_limit": 16}}}


def _adapted_config(tmp_path, tiny_llama, corpora, task, **kw):
    tasks = {"topics": {**ADAPTED["topics"], "path": str(task)}}
    settings = dict(methods=["lora", "domix", "lora_equal_data"], seeds=[2], search=None, tasks=tasks,
                    instruct={"epochs": 1, "batch_size": 16, "lr": 5e-3, "max_length": 64, "dtype": "float64", "train_limit": 32},
                    task_adapters={"train_limit": 24, "lora_rank": 4})
    settings.update(kw)
    return write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, **settings)


def test_task_adapters_train_on_records_no_row_sees_and_the_equal_data_row_sees_both(tmp_path, tiny_llama, corpora, task):
    """task_adapters: each instruction task's own LoRA trains first on records that follow the rows' in one seeded order
    (drawn here by hand from torch.randperm, as the rows' sample is), the composing rows take it as an adapter, the
    fresh LoRA rows its rank on top of the modules', and the equal-data row the records of both."""
    import torch

    from domix.llm.labelled import read_labelled
    from domix.tasks import read_task

    jobs = {j.name: j for j in plan(CompareConfig.from_yaml(_adapted_config(tmp_path, tiny_llama, corpora, task)))}
    adapter = jobs["adapters/topics"]
    assert adapter.role == "adapter" and adapter.kind == "instruct"
    wanted = {"method": "lora", "train_limit": 24, "train_skip": 32, "lora_rank": 4, "score_test": False, "save_model": True}
    assert {k: adapter.settings[k] for k in wanted} == wanted
    rows = {j.info["method"]: j for j in jobs.values() if j.role == "test"}
    assert rows["domix"].settings["adapters"] == [str(adapter.out / "model")] and "adapters" not in rows["lora"].settings
    assert rows["lora"].settings["lora_rank"] == 2 * 2 + 4  # the two modules' rank 2 and the adapter's 4: domix's total
    assert rows["lora_equal_data"].settings["train_limit"] == 32 + 24 and "train_skip" not in rows["lora_equal_data"].settings

    texts = read_task(str(task)).splits["train"].texts
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()  # sample_seed 0

    def drawn(job):
        c = job.config()
        lt = read_labelled(c.task, None, c.train_limit, c.eval_limit, c.sample_seed, False, c.train_skip)
        return sorted(e.input for e in lt.examples["train"])

    assert drawn(rows["lora"]) == sorted(texts[i] for i in order[:32])
    assert drawn(adapter) == sorted(texts[i] for i in order[32:56])
    assert drawn(rows["lora_equal_data"]) == sorted(texts[i] for i in order[:56])


@pytest.mark.parametrize("kw, message", [
    ({"task_adapters": None}, r"\['lora_equal_data'\] compose each task's own adapters or train on their records"),
    ({"task_adapters": {"lora_rank": 4}}, "task_adapters needs train_limit"),
    ({"instruct": {"epochs": 1}}, r"task 'topics': with task_adapters the rows train on a sample"),
    ({"method_settings": {"lora": {"train_limit": 40}}}, r"method_settings of \['lora'\] set train_limit"),
    ({"task_adapters": {"train_limit": 24, "train_skip": 3}}, r"task_adapters settings have unknown or reserved keys \['train_skip'\]"),
    ({"search": {"seeds": [1], "space": {"train_limit": [16, 32]}}, "seeds": [2, 3, 4]}, r"sets \['train_limit'\], which a search may not vary"),
])
def test_task_adapters_that_would_mix_records_are_refused(tmp_path, tiny_llama, corpora, task, kw, message):
    with pytest.raises(DomixError, match=message):
        CompareConfig.from_yaml(_adapted_config(tmp_path, tiny_llama, corpora, task, **kw))


def test_the_composing_row_trains_the_bridge_over_the_store_and_the_task_adapter(tmp_path, tiny_llama, corpora, task):
    """In a run: the adapter trains without reading test, then domix composes the two domain modules and the adapter (named
    after its task), and results.json lists the adapter with its cost."""
    cfg = CompareConfig.from_yaml(_adapted_config(tmp_path, tiny_llama, corpora, task, methods=["domix", "lora_equal_data"]))
    results = compare(cfg, in_process=True)
    adapter_record = json.loads((tmp_path / "out" / "adapters" / "topics_task" / "result.json").read_text())
    assert adapter_record["test"] is None and adapter_record["examples"]["train"] == 24
    domix = next(r for r in results["runs"] if r["method"] == "domix")
    record = json.loads((tmp_path / "out" / "finetune" / "domix" / "topics" / "seed2" / "result.json").read_text())
    assert sorted(m["name"] for m in record["modules"]) == ["bio", "food", "topics_task"]
    assert record["examples"]["train"] == 32 and domix["test"] is not None
    equal = json.loads((tmp_path / "out" / "finetune" / "lora_equal_data" / "topics" / "seed2" / "result.json").read_text())
    assert equal["examples"]["train"] == 56
    [listed] = results["task_adapters"]
    assert listed["task"] == "topics" and listed["records"] == 24 and listed["used_by"] == ["domix", "lora_equal_data"]


def _choice_task(tmp_path):
    """An instruction file (the response names the topic of the instruction's words) and two multiple-choice files."""
    import random

    from conftest import WORDS

    rng, topics = random.Random(0), {"pizza": WORDS[:8], "gene": WORDS[10:16]}
    rows = [{"instruction": " ".join(rng.choice(topics[t]) for _ in range(4)), "output": t} for t in list(topics) * 24]
    train = tmp_path / "mixture.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = {}
    for name, n in (("mini_a", 6), ("mini_b", 4)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"goal": " ".join(rng.choice(WORDS[:8]) for _ in range(3)), "sol1": "pizza",
                                                   "sol2": "gene", "label": i % 2}) + "\n" for i in range(n)))
    return train, {k: str(v) for k, v in files.items()}


def test_an_instruction_file_task_reports_each_choice_file_as_a_task(tmp_path, tiny_llama, corpora, task):
    """A task trained on an instruction file (domix instruct --train) and scored on multiple-choice files: each file a
    task of the results, its scores those the run's choice test recorded (log-likelihood and generated), paired against
    the named reference question by question; without choice files, a reference, or with a search, it is refused."""
    train, files = _choice_task(tmp_path)
    spec = {"mix": {"path": str(train), "domain": "food", "kind": "instruction", "instruct": {"choice_tests": files}}}
    common = dict(tasks=spec, search=None, seeds=[2, 3], methods=["base", "lora"],
                  instruct={"epochs": 1, "batch_size": 8, "lr": 5e-3, "max_length": 48, "dtype": "float64"})
    for kw, message in (({"reference": "lora", "tasks": {"mix": {**spec["mix"], "instruct": {}}}}, r"score nothing on test"),
                        ({}, "no macro-F1 to choose the reference row on; name it"),
                        ({"reference": "lora", "search": SEARCH, "seeds": [2, 3, 4]}, "drop search or those tasks")):
        with pytest.raises(DomixError, match=message):
            CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, **{**common, **kw}))
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, reference="lora", **common))
    job = next(j for j in plan(cfg) if j.info["method"] == "lora")
    assert job.config().train == str(train) and job.config().task is None and job.config().choice_tests == files

    results = compare(cfg, in_process=True)
    assert results["tasks"] == ["mini_a", "mini_b"] and len(results["runs"]) == 2 * 2 * 2
    for run in results["runs"]:
        record = json.loads((tmp_path / "out" / "finetune" / run["method"] / "mix" / f"seed{run['seed']}" / "result.json").read_text())
        value = {(r["protocol"], r["metric"]): r["value"] for r in record["choice_test"]["results"] if r["task"] == run["task"]}
        assert run["test"]["accuracy"] == pytest.approx(value[("loglikelihood", "acc")])  # counted by score_loglikelihood itself
        assert run["test"]["accuracy_norm"] == pytest.approx(value[("loglikelihood", "acc_norm")])
        assert run["test_generate"]["accuracy"] == pytest.approx(value[("generate", "acc")])
        assert run["test_generate"]["unanswered"] == pytest.approx(value[("generate", "unanswered")])
        assert len(run["test_predictions"]["gold"]) == {"mini_a": 6, "mini_b": 4}[run["task"]]
    assert set(results["paired"]["accuracy"]["base"]["tasks"]) == {"mini_a", "mini_b"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Generated answers" in report and "## Cost against lora" in report
    # the cost table: lora against itself, base with no step; the step time read off the records by hand
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "finetune" / "lora" / "mix").glob("seed*/result.json")]
    step = sum(r["train_time_s"] / r["steps"] for r in records) / len(records)
    assert f"| lora | {records[0]['trainable_percent']:.2f} | {max(r['peak_memory_mb'] for r in records):.0f} | 1.00x | {step:.2f} | 1.00x |" in report
    assert [line for line in report.splitlines() if line.startswith("| base |") and line.endswith("| - | - |")]


def test_adapters_from_files_compose_and_the_equal_data_row_trains_on_every_file(tmp_path, tiny_llama, corpora, task):
    """An instruction file's task names the files its adapters train on (the DoMIX LLM setting: adapters trained earlier on
    other data): an adapter each, named after it, composed by domix beside the store's modules; the fresh LoRA rows get
    the total rank; lora_equal_data trains on the task's file and every adapter's."""
    train, files = _choice_task(tmp_path)
    sources = {}
    for name, n in (("a", 16), ("b", 12)):
        sources[name] = tmp_path / f"adapter-{name}.jsonl"
        sources[name].write_text("".join(json.dumps({"instruction": f"say {name} {i}", "output": name}) + "\n" for i in range(n)))
    spec = {"mix": {"path": str(train), "domain": "food", "kind": "instruction", "instruct": {"choice_tests": files},
                    "adapters": {k: str(v) for k, v in sources.items()}}}
    common = dict(tasks=spec, search=None, seeds=[2], methods=["lora", "domix", "lora_equal_data"], reference="lora",
                  task_adapters={"lora_rank": 2, "epochs": 1},
                  instruct={"epochs": 1, "batch_size": 8, "lr": 5e-3, "max_length": 48, "dtype": "float64"})
    for kw, message in (({"task_adapters": None}, r"name their adapters' files; add task_adapters"),
                        ({"task_adapters": {"train_limit": 8}}, "no train_limit may apply"),
                        ({"tasks": {"topics": {"path": str(task), "domain": "food", "kind": "instruction",
                                               "adapters": {"a": str(sources["a"])}}}},
                         "adapters: files are for a task trained on an instruction file")):
        with pytest.raises(DomixError, match=message):
            CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, **{**common, **kw}))
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, **common))
    jobs = {j.name: j for j in plan(cfg)}
    assert [jobs[f"adapters/mix/{n}"].settings["train"] for n in ("a", "b")] == [str(sources["a"]), str(sources["b"])]
    rows = {j.info["method"]: j for j in jobs.values() if j.role == "test"}
    assert rows["lora"].settings["lora_rank"] == 2 * 2 + 2 + 2
    assert rows["lora_equal_data"].config().train == [str(train), str(sources["a"]), str(sources["b"])]

    compare(cfg, in_process=True)
    out = tmp_path / "out" / "finetune"
    domix = json.loads((out / "domix" / "mix" / "seed2" / "result.json").read_text())
    assert sorted(m["name"] for m in domix["modules"]) == ["a", "b", "bio", "food"]
    equal = json.loads((out / "lora_equal_data" / "mix" / "seed2" / "result.json").read_text())
    assert equal["examples"]["train"] + equal["examples"]["dev"] == 48 + 16 + 12
