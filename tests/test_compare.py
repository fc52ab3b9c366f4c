"""domix compare: the plan of jobs, an end-to-end run of every method, resuming, and its errors."""

import json
import re

import pytest
import torch

from domix.cli import main
from domix.comparison.config import METHODS, CompareConfig, domain_orders
from domix.methods.registry import CLASSIFIER
from domix.comparison.run import compare, plan
from domix.errors import DomixError

from conftest import write_compare_config

# every row a classification task runs (not those that need an instruction task's adapters)
CLASSIFIER_ROWS = [m for m, row in METHODS.items() if row.finetune in CLASSIFIER and not row.needs_adapters]


def write_config(path, tiny_llama, corpora, task, **kw):
    """Every method, two domain orders, a learning rate of full fine-tuning's own, MixDA's retention text."""
    return write_compare_config(path, tiny_llama, corpora, task, **{
        "methods": CLASSIFIER_ROWS, "orders": 2,
        "method_settings": {"full": {"lr": 1e-3}, "ncl_full": {"lr": 1e-3}},
        "pretrain_method_settings": {"ncl_full": {"lr": 1e-3}},
        "general": str(corpora["bio"]),  # MixDA's retention text (any text will do for the plumbing)
        **kw})


def test_plan_shares_pretraining_and_runs_ordered_methods_once_per_order(tmp_path, tiny_llama, corpora, task):
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, seeds=[1, 2]))
    jobs = plan(cfg)
    pretrain = sorted(j.name for j in jobs if j.kind == "pretrain")
    assert pretrain == ["pretrain/domix", "pretrain/joint_lora", "pretrain/mixda", "pretrain/mode", "pretrain/ncl_full-bio-food",
                        "pretrain/ncl_full-food-bio", "pretrain/ncl_lora-bio-food", "pretrain/ncl_lora-food-bio"]
    finetune = [j for j in jobs if j.kind == "finetune"]
    assert len(finetune) == 16 * 2 + 2 * 2 * 2  # order-free methods x seeds + ordered methods (ncl_*) x orders x seeds
    by_name = {j.name: j.settings for j in finetune}
    assert by_name["finetune/domix/topics/seed1"]["domains"] is None  # the whole store: the bridge lays it out by name
    assert by_name["finetune/lora_module/topics/seed2"]["init_module"] == "food"  # the task's own domain
    assert by_name["finetune/lora/topics/seed1"]["lora_rank"] == 4  # rank 2 x 2 domains
    assert by_name["finetune/lora_module_rank/topics/seed1"]["lora_rank"] == 2  # one module's, as lora_module has
    assert "init_module" not in by_name["finetune/lora_module_rank/topics/seed1"]
    paper = next(j for j in finetune if j.name == "finetune/domix_paper/topics/seed1").config()
    assert (paper.method_options.p_init, paper.method_options.p_lr, paper.method_options.b_lr, paper.lr) == ("scaled_identity", None, None, 5e-3)  # the published bridge, the comparison's lr
    diagonal = next(j for j in finetune if j.name == "finetune/domix_diagonal/topics/seed1").config()
    assert diagonal.method_options.p_blocks == "diagonal" and diagonal.method == "domix"  # the row's own setting
    assert by_name["finetune/ncl_full/topics/seed1-bio-food"]["model"].endswith("pretrain/ncl_full-bio-food/ncl-full")
    assert by_name["finetune/full/topics/seed1"]["lr"] == 1e-3 and by_name["finetune/domix/topics/seed1"]["lr"] == 5e-3
    assert all(j.settings["seed"] in (1, 2) for j in finetune)
    lrs = {j.name: j.settings["lr"] for j in jobs if j.kind == "pretrain"}
    assert lrs["pretrain/ncl_full-food-bio"] == 1e-3 and lrs["pretrain/domix"] == 5e-3
    general = {j.name: j.settings.get("general") for j in jobs if j.kind == "pretrain"}
    assert general["pretrain/mixda"] == str(corpora["bio"]) and general["pretrain/domix"] is None


def test_a_missing_general_text_stops_the_comparison_before_its_first_job(tmp_path, tiny_llama, corpora, task, capsys):
    """MixDA's stage 1 reads general-domain text: a comparison naming a file that is not there says so, with the make
    target that writes the shipped configs' one, before any job runs (not after the jobs planned before it)."""
    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head", "mixda"], general=str(tmp_path / "general.txt"))
    assert main(["compare", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"pretrain/mixda trains on the general-domain text {tmp_path / 'general.txt'}, which does not exist" in err
    assert "make .cache/general.txt" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "finetune").exists() and not (tmp_path / "out" / "pretrain").exists()


def test_a_method_may_run_fewer_seeds(tmp_path, tiny_llama, corpora, task):
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, seeds=[1, 2], methods=["head", "domix"],
                                               method_seeds={"head": [2]}))
    names = sorted(j.name for j in plan(cfg) if j.kind == "finetune")
    assert names == ["finetune/domix/topics/seed1", "finetune/domix/topics/seed2", "finetune/head/topics/seed2"]
    for bad, message in (({"lora": [1]}, "names 'lora', which is not among"), ({"head": []}, "must be a list of whole numbers")):
        with pytest.raises(DomixError, match=message):
            CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head"], method_seeds=bad))


def test_job_times_keep_what_a_comparison_beside_this_one_wrote(tmp_path, tiny_llama, corpora, task, monkeypatch):
    # two comparisons of one out folder (other --methods) run at once; each job's time is merged into the file
    from domix.comparison import run as run_module

    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head"])
    real_run = run_module.run_job

    def run_while_another_writes(job, out, *args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "job_times.json").write_text(json.dumps({"finetune/other/topics/seed1": 12.5}))
        return real_run(job, out, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_job", run_while_another_writes)
    compare(CompareConfig.from_yaml(config), in_process=True)
    times = json.loads((tmp_path / "out" / "job_times.json").read_text())
    assert times["finetune/other/topics/seed1"] == 12.5 and times["finetune/head/topics/seed1"] > 0


def test_a_store_whose_weights_were_not_kept_trains_again_only_when_a_job_yet_to_run_starts_from_it(
        tmp_path, tiny_llama, corpora, task, capsys):
    # a store committed without its weights (MoDE's expert copies are too large for git): with every job finished the
    # comparison reads its records and trains nothing; a new seed starts from the store, so the store trains again first
    from safetensors.torch import load_file

    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["domix"], seeds=[1])
    compare(CompareConfig.from_yaml(config), in_process=True)
    store = tmp_path / "out" / "pretrain" / "domix"
    weights = sorted(store.glob("*/*.safetensors"))
    kept = {w: load_file(w) for w in weights}
    assert len(weights) == len(corpora)
    for w in weights:
        w.unlink()
    capsys.readouterr()
    compare(CompareConfig.from_yaml(config), in_process=True)
    assert "trains again" not in capsys.readouterr().out and not any(store.glob("*/*.safetensors"))

    more = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["domix"], seeds=[1, 2])
    assert main(["compare", str(more), "--dry-run"]) == 0
    assert "finished, without its weights: trains again" in capsys.readouterr().out
    results = compare(CompareConfig.from_yaml(more), in_process=True)
    assert "holds a finished pretrain/domix but not its weights" in capsys.readouterr().out
    assert sorted(store.glob("*/*.safetensors")) == weights and {r["seed"] for r in results["runs"]} == {1, 2}
    for w in weights:  # the same run again: the same weights as the first time
        assert all(torch.equal(load_file(w)[k], v) for k, v in kept[w].items())


def test_a_resumed_jobs_time_adds_the_attempts_that_stopped_before_it(tmp_path, tiny_llama, corpora, task):
    # an attempt stopped by a restart of the machine ran from its start (its attempt file) to its log's last write;
    # the job's recorded time is that plus the attempt that finished, and the attempt file goes once it has finished
    import os
    import time

    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head"])
    out, name = tmp_path / "out", "finetune/head/topics/seed1"
    attempt, log = out / "logs" / f"{name}.attempt.json", out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True)
    now = time.time()
    attempt.write_text(json.dumps({"earlier_s": 100.0, "started": now - 1000}))  # one attempt before that one: 100 s
    log.write_text("$ python -m domix finetune ...\n")
    os.utime(log, (now - 400, now - 400))  # the stopped attempt's last line, 600 s after its start
    compare(CompareConfig.from_yaml(config), in_process=True)
    times = json.loads((out / "job_times.json").read_text())
    assert 700 < times[name] < 700 + 120 and not attempt.exists()


def test_a_store_without_a_job_time_takes_its_wall_time_from_its_modules(tmp_path, tiny_llama, corpora, task):
    # a store made before job_times.json kept pre-training times: the report's DAP time came out 0.0
    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["domix"])
    compare(CompareConfig.from_yaml(config), in_process=True)
    out = tmp_path / "out"
    times = json.loads((out / "job_times.json").read_text())
    del times["pretrain/domix"]
    (out / "job_times.json").write_text(json.dumps(times))
    compare(CompareConfig.from_yaml(config), in_process=True)
    manifests = [json.loads(p.read_text()) for p in sorted((out / "pretrain" / "domix").glob("*/domix_manifest.json"))]
    assert len(manifests) == 2 and all(m["training"]["fused_with"] for m in manifests)  # fused: they started together
    (pretraining,) = json.loads((out / "results.json").read_text())["pretraining"]
    assert pretraining["wall_time_s"] > 0
    assert pretraining["wall_time_s"] == pytest.approx(max(m["wall_time_s"] for m in manifests), abs=0.01)


def test_an_ordered_method_may_run_fewer_orders(tmp_path, tiny_llama, corpora, task):
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["ncl_lora", "ncl_full"],
                                               method_orders={"ncl_full": 1}))
    names = sorted(j.name for j in plan(cfg) if j.kind == "finetune")
    assert names == ["finetune/ncl_full/topics/seed1-food-bio",  # the first of the orders
                     "finetune/ncl_lora/topics/seed1-bio-food", "finetune/ncl_lora/topics/seed1-food-bio"]
    assert sorted(j.name for j in plan(cfg.narrowed(methods=["ncl_lora"])) if j.kind == "finetune") == names[1:]
    for bad, message in (({"lora": 1}, "method_orders names 'lora', which is not among"),
                         ({"ncl_lora": 3}, "method_orders.ncl_lora must be a whole number from 1 to 2"),
                         ({"ncl_lora": True}, "setting 'method_orders' holds True, which is not a whole number"),
                         ({"domix": 1}, "method_orders names 'domix', whose run is the same in every domain order")):
        with pytest.raises(DomixError, match=message):
            CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["ncl_lora", "domix"],
                                                 method_orders=bad))


def test_a_part_of_a_comparison_runs_first_and_the_full_run_reuses_it(tmp_path, tiny_llama, corpora, task, capsys):
    """--methods/--tasks/--seeds: the same jobs as the full plan's, in the same folders, and no report of the part."""
    path = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, seeds=[1, 2], methods=["head", "lora", "domix"],
                        method_seeds={"head": [2]}, orders=1)
    cfg = CompareConfig.from_yaml(path)
    full = {j.name: j.settings for j in plan(cfg)}
    part = cfg.narrowed(methods=["head", "domix"], seeds=[1])
    names = sorted(j.name for j in plan(part) if j.kind == "finetune")
    assert names == ["finetune/domix/topics/seed1"]  # head has only seed 2; lora is left out
    assert all(full[j.name] == j.settings for j in plan(part))  # the very jobs of the full plan
    for bad, message in ((dict(methods=["lorra"]), "--methods lorra names ['lorra']"), (dict(seeds=[3]), "--seeds 3"),
                         (dict(tasks=[]), "names nothing")):
        with pytest.raises(DomixError, match=re.escape(message)):
            cfg.narrowed(**bad)
    assert main(["compare", str(path), "--methods", "lora", "--seeds", "1"]) == 0
    assert "a part of the comparison" in capsys.readouterr().out
    out = tmp_path / "out"
    assert (out / "finetune" / "lora" / "topics" / "seed1" / "result.json").is_file() and not (out / "results.json").exists()
    done = (out / "finetune" / "lora" / "topics" / "seed1" / "result.json").stat().st_mtime_ns
    assert main(["compare", str(path)]) == 0
    assert (out / "finetune" / "lora" / "topics" / "seed1" / "result.json").stat().st_mtime_ns == done  # reused
    assert (out / "results.json").is_file()


def test_a_task_names_its_columns_and_splits_for_every_job(tmp_path, tiny_llama, corpora, task):
    spec = {"topics": {"path": str(task), "domain": "food", "text_column": "sentence", "splits": {"dev": "validation"}}}
    jobs = plan(CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, tasks=spec)))
    for job in (j for j in jobs if j.kind == "finetune"):
        assert job.settings["text_column"] == "sentence" and job.settings["splits"] == {"dev": "validation"}
        job.config().validate()
    spec["topics"]["label"] = "y"
    with pytest.raises(DomixError, match=r"unknown keys \[.label.\]; a classification task knows: path, domain, kind, finetune, text_column"):
        CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, tasks=spec))


def test_a_task_may_have_its_own_finetune_settings(tmp_path, tiny_llama, corpora, task):
    """A task that needs a longer schedule gets it; the method's own settings still win over the task's."""
    spec = {"topics": {"path": str(task), "domain": "food", "finetune": {"epochs": 3, "lr": 1e-3}},
            "other": {"path": str(task), "domain": "bio"}}
    cfg = CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, tasks=spec, methods=["lora", "full"]))
    settings = {j.name: j.settings for j in plan(cfg) if j.kind == "finetune"}
    assert (settings["finetune/lora/topics/seed1"]["epochs"], settings["finetune/lora/topics/seed1"]["lr"]) == (3, 1e-3)
    assert (settings["finetune/lora/other/seed1"]["epochs"], settings["finetune/lora/other/seed1"]["lr"]) == (1, 5e-3)
    assert settings["finetune/full/topics/seed1"]["lr"] == 1e-3 and settings["finetune/full/topics/seed1"]["epochs"] == 3
    for bad, message in (({"epochs": 3, "seed": 2}, r"tasks.topics.finetune settings have unknown or reserved keys \['seed'\]"),
                         (4, "'finetune' must be a mapping of settings")):
        spec["topics"]["finetune"] = bad
        with pytest.raises(DomixError, match=message):
            CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, tasks=spec))


def test_compare_runs_every_method_and_resumes(tmp_path, tiny_llama, corpora, task, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task)
    results = compare(CompareConfig.from_yaml(config), in_process=True)
    out = tmp_path / "out"
    assert {r["method"] for r in results["runs"]} == set(CLASSIFIER_ROWS) and len(results["runs"]) == 16 + 2 * 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == results["runs"]
    domix = [r for r in results["runs"] if r["method"] == "domix"]
    assert len(domix) == 1 and domix[0]["order"] is None and domix[0]["bridge_usage"]["domains"] == ["bio", "food"]  # by name
    ncl = {r["order"]: r for r in results["runs"] if r["method"] == "ncl_lora"}
    assert ncl["food>bio"]["loss_curve"] != ncl["bio>food"]["loss_curve"]  # sequential pre-training does depend on order
    full = next(r for r in results["runs"] if r["method"] == "full")
    assert full["trainable_percent"] == 100.0 and full["bridge_usage"] is None
    pretraining = {p["name"]: p for p in results["pretraining"]}
    assert pretraining["pretrain/domix"]["used_by"] == ["lora_module", "dora_module", "cat", "domix_fixed", "domix", "domix_paper",
                                                        "domix_diagonal"]
    assert all(p["peak_memory_mb"] > 0 and p["wall_time_s"] > 0 for p in results["pretraining"])
    for name in ("report.md", "report.html"):
        assert (out / name).is_file()
    assert "domix" in capsys.readouterr().out

    times = (out / "job_times.json").read_text()
    again = compare(CompareConfig.from_yaml(config), in_process=True)  # everything finished: nothing reruns
    assert "28 jobs, 28 already finished" in capsys.readouterr().out
    assert (out / "job_times.json").read_text() == times and again["runs"] == results["runs"]

    # a run made before a setting existed ran with its default: still reused
    run_file = out / "finetune" / "lora" / "topics" / "seed1" / "run.json"
    run = json.loads(run_file.read_text())
    del run["config"]["general_blocks"]
    run["config"].update(p_lr="3x", p_weight_decay=0.5)  # the bridge's settings: a LoRA run does not read them
    run_file.write_text(json.dumps(run))
    # a run with the published bridge's values made without naming the recipe (a plain finetune with those flags) is the same run
    paper_file = out / "finetune" / "domix_paper" / "topics" / "seed1" / "run.json"
    paper = json.loads(paper_file.read_text())
    assert paper["config"]["recipe"] == "paper" and paper["config"]["p_lr"] is None
    paper["config"]["recipe"] = None
    paper_file.write_text(json.dumps(paper))
    compare(CompareConfig.from_yaml(config), in_process=True)
    assert "28 already finished" in capsys.readouterr().out
    paper["config"]["p_weight_decay"] = 0.0  # a value, though, is compared
    paper_file.write_text(json.dumps(paper))
    compare(CompareConfig.from_yaml(config), dry_run=True)
    assert re.search(r"finished with other p_weight_decay \(--overwrite reruns it\) .*domix_paper/topics/seed1\.yaml",
                     capsys.readouterr().out)

    changed = write_config(tmp_path / "c2.yaml", tiny_llama, corpora, task, finetune={"epochs": 2, "max_length": 32})
    with pytest.raises(DomixError, match="holds a finished finetune run with other settings"):
        compare(CompareConfig.from_yaml(changed), in_process=True)
    compare(CompareConfig.from_yaml(changed), dry_run=True)
    assert re.search(r"finished with other [a-z_, ]*epochs[a-z_, ]* \(--overwrite reruns it\)", capsys.readouterr().out)


def test_compare_command_runs_jobs_in_their_own_processes(tmp_path, tiny_llama, corpora, task, capsys, monkeypatch):
    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["domix", "cat"], jobs=2)
    assert main(["compare", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("to run") == 3
    monkeypatch.setenv("DOMIX_PROGRESS_EVERY", "0.05")  # the running jobs' lines, as a log gets them every minute
    assert main(["compare", str(config)]) == 0  # the two fine-tuning jobs run at once
    shown = capsys.readouterr().out
    assert shown.count("] started") == 3 and shown.count("] finished") == 3 and "3 job(s) ran in" in shown
    # each job's status file, read as it runs: mid-training ("step 2/4, loss, ETA") or done training ("trained ..."), as
    # the 0.05 s ticks happen to fall (4 tiny steps may all fall between two of them)
    assert re.search(r"domix: \[1/3\] pretrain/domix: food\+bio (step \d/4 \(\d+%\), loss [\d.]+ [\d.]+, ETA \d+s|trained \(4 steps\))",
                     shown)
    for method in ("domix", "cat"):
        assert re.search(rf"domix: \[[23]/3\] finetune/{method}/topics/seed1: task '\w+' (step \d/6 \(\d+%\), loss [\d.]+, ETA|"
                         r"trained \(6 steps\), finishing up)", shown)
    out = tmp_path / "out"
    for method in ("domix", "cat"):
        log = (out / "logs" / "finetune" / method / "topics" / "seed1.log").read_text()
        assert "domix finetune --config" in log and "test accuracy" in log
        assert re.search(r"domix: task '\w+': step 6/6, loss", log)  # a log gets progress lines instead of a bar
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["command"].startswith("domix compare ")
    assert [r["method"] for r in results["runs"]] == ["domix", "cat"]
    capsys.readouterr()
    assert main(["compare", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("finished") == 3


def test_bad_comparison_configs_are_refused(tmp_path, tiny_llama, corpora, task):
    with pytest.raises(DomixError, match=r"unknown method\(s\) \['lasso'\]"):
        CompareConfig.from_yaml(write_config(tmp_path / "a.yaml", tiny_llama, corpora, task, methods=["lasso"]))
    with pytest.raises(DomixError, match="not among the domains"):
        CompareConfig.from_yaml(write_config(tmp_path / "b.yaml", tiny_llama, corpora, task, tasks={"t": {"path": str(task), "domain": "law"}}))
    with pytest.raises(DomixError, match="not a permutation"):
        CompareConfig.from_yaml(write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, orders=[["food"]]))
    with pytest.raises(DomixError, match="reserved keys"):
        CompareConfig.from_yaml(write_config(tmp_path / "d.yaml", tiny_llama, corpora, task, finetune={"method": "lora"}))
    with pytest.raises(DomixError, match="jobs must be a whole number"):
        CompareConfig.from_yaml(write_config(tmp_path / "e.yaml", tiny_llama, corpora, task, jobs=0))
    with pytest.raises(DomixError, match="does not exist"):
        CompareConfig.from_yaml(tmp_path / "missing.yaml")


def test_default_orders_are_the_given_one_its_reverse_then_the_rest():
    assert domain_orders(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "c", "b"]]
    with pytest.raises(DomixError, match="between 1 and 2"):
        domain_orders(["a", "b"], 3)


def test_the_live_view_redraws_one_line_per_running_job_on_a_terminal(tmp_path):
    import io
    import time

    from domix.comparison.progress import Board

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    status = tmp_path / "job.progress.json"
    with Board(2, stream=screen) as board:
        board.start(1, "finetune/lora/t/seed1", status)
        status.write_text(json.dumps({"label": "finetune", "step": 3, "total": 12, "loss": "0.512", "eta_s": 75}))
        time.sleep(1.3)  # a redraw
        board.end("finetune/lora/t/seed1", ok=True)
    text = screen.getvalue()
    assert "domix: [1/2] started finetune/lora/t/seed1\n" in text
    assert "  [1/2] finetune/lora/t/seed1: finetune step 3/12 (25%), loss 0.512, ETA 1m15s" in text
    assert "\x1b[1F\x1b[J" in text  # the job line is erased before it is drawn again
    assert text.rstrip().splitlines()[-1].endswith("finished finetune/lora/t/seed1 in 1s")


def test_report_only_writes_the_report_again_from_results(tmp_path, tiny_llama, corpora, task, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head"])
    assert main(["compare", str(config), "--report-only"]) == 2
    assert "results.json does not exist: run the comparison first" in capsys.readouterr().err
    from test_compare_report import make_results

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(make_results()))
    assert main(["compare", str(config), "--report-only"]) == 0
    assert (out / "report.html").is_file() and (out / "plots" / "bridge_t1.png").is_file() and not (out / "logs").exists()


def test_two_processes_recording_job_times_in_one_folder_lose_no_entry(tmp_path):
    # two comparisons of one out folder (other --methods), each its own process, record their jobs' times at once
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from domix.comparison.run import record_time\n"
              "for i in range(40): record_time(Path(sys.argv[1]), f'{sys.argv[2]}/job{i}', float(i))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), who]) for who in ("a", "b")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    times = json.loads((tmp_path / "job_times.json").read_text())
    assert len(times) == 80 and times["a/job39"] == 39.0 and times["b/job0"] == 0.0


def test_a_running_jobs_line_says_what_its_status_file_says(tmp_path):
    """The board's line of a job: 'starting' before its loop wrote a status file, then step, loss and ETA, then
    'trained' once every step is done (what the process test above sees depends on when its ticks fall)."""
    import io

    from domix.comparison.progress import Board

    status = tmp_path / "job.progress.json"
    board = Board(3, stream=io.StringIO(), every_s=60)
    board.start(2, "finetune/domix/topics/seed1", status)
    assert re.fullmatch(r"  \[2/3\] finetune/domix/topics/seed1: starting \(\d+s\)", board.lines()[0])
    status.write_text(json.dumps({"label": "task 'topics'", "step": 2, "total": 6, "loss": "0.693", "eta_s": 12}))
    assert re.fullmatch(r"  \[2/3\] finetune/domix/topics/seed1: task 'topics' step 2/6 \(33%\), loss 0\.693, ETA 12s "
                        r"\(\d+s so far\)", board.lines()[0])
    status.write_text(json.dumps({"label": "task 'topics'", "step": 6, "total": 6, "loss": "0.5", "eta_s": 0}))
    assert "task 'topics' trained (6 steps), finishing up" in board.lines()[0]
