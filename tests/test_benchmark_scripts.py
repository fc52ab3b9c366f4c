"""The benchmark scripts no other test runs, each end to end at a size of seconds on the tiny models, corpora and task
of conftest.py: the table each prints and the JSON each writes. Each runs in this process through its main(), its
command line in sys.argv; the processes a script starts itself (finetune_memory's, large_corpus's and
pretrain_throughput's) are started for real. The machine's matrix-multiply rate is measured on a small product,
and every child process gets one thread."""

from __future__ import annotations

import functools
import importlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when a script of it runs: the scripts import each other (step_rate, compare_reading)


def script(name: str):
    """benchmarks/<name>.py as a module."""
    return importlib.import_module(name)


@pytest.fixture
def run(monkeypatch, capsys, tmp_path):
    """``run(name, *args)``: benchmarks/<name>.py's main() with ``args`` as its command line, from a fresh folder (a
    default output path lands there, never in benchmarks/results); returns what it printed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOMIX_THREADS", "1")  # the processes a script starts: one thread each

    def run(name: str, *args) -> str:
        monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), *map(str, args)])
        capsys.readouterr()
        script(name).main()
        return capsys.readouterr().out

    return run


@pytest.fixture
def small_matmul(monkeypatch):
    """step_rate.matmul_gflops on a 128^3 product where the scripts call it (their 2048^3 takes seconds on one thread)."""
    small = functools.partial(script("step_rate").matmul_gflops, n=128, repeats=2)
    monkeypatch.setattr(script("step_rate"), "matmul_gflops", small)
    monkeypatch.setattr(script("pretrain_throughput"), "matmul_gflops", small)


def numbers(value) -> list[float]:
    """Every number in a JSON value, nested at any depth."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def all_finite(value) -> bool:
    """Whether a JSON value holds numbers and every one is finite."""
    found = numbers(value)
    return bool(found) and all(math.isfinite(x) for x in found)


def rows_of(out: str, header: str, n: int) -> dict[str, list[str]]:
    """The ``n`` rows printed under the line that starts with ``header`` (a rule of dashes skipped): first cell -> the
    other cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 1
    body = [line for line in lines[start:] if not set(line) <= set("- ")][:n]
    return {first: cells for first, *cells in (re.split(r"\s{2,}|\s(?=[-+\d])", line.strip()) for line in body)}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama, corpora) -> Path:
    """A finished two-domain domix pretrain run on the tiny Llama (food and bio, rank 4, 4 steps each)."""
    from domix.pretraining.config import PretrainConfig
    from domix.pretraining.run import pretrain

    out = tmp_path_factory.mktemp("bench-store") / "store"
    pretrain(PretrainConfig(model=str(tiny_llama), domains={n: str(p) for n, p in corpora.items()}, out=str(out), lora_rank=4,
                            steps=4, batch_size=8, seq_len=32, lr=5e-3, heldout_max_blocks=4))
    return out


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory) -> Path:
    """A tiny random Llama with 1,024 token ids and no tokenizer: the scripts that draw ids up to 1000 themselves."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wide-llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                                 eos_token_id=2)).save_pretrained(path)
    return path


def test_module_overlap_reports_cosines_and_the_rank_of_a_cat(run, store, tmp_path):
    """module_overlap.py: both modules and all 14 layers, |cos| in [0, 1], A_cat's rank at most Σr and its singular values;
    a store of one module is refused."""
    out = run("module_overlap", store)
    assert "2 modules (bio, food), 14 layers" in out
    cos = re.search(r"median ([\d.]+), max ([\d.]+); above 0.9: \d+ of 14\b", out)
    assert cos and 0 <= float(cos[1]) <= float(cos[2]) <= 1
    ranks = re.search(r"numerical rank of A_cat: min (\d+), median [\d.]+, max (\d+) \(Σr = 8\)", out)
    assert ranks and 1 <= int(ranks[1]) <= int(ranks[2]) <= 8
    values = re.search(r"layers\.0\.mlp\.down_proj: singular values of A_cat (.*)", out)[1].split()
    assert len(values) == 8 and all(math.isfinite(float(v)) and float(v) >= 0 for v in values)

    shutil.copytree(store / "food", tmp_path / "one" / "food")
    with pytest.raises(SystemExit, match="fewer than two LoRA modules"):
        run("module_overlap", tmp_path / "one")


def test_module_knowledge_tables_match_the_stores_own_figures(run, store, task, tmp_path):
    """module_knowledge.py: the module x corpus loss table (its base row and diagonal are the manifests' held-out losses
    before and after), how far each module moved, and each module's share on a task's inputs; --only-tasks replaces
    only its own part of the JSON."""
    out = run("module_knowledge", store, "--tasks", f"topics={task}", "--max-length", 32, "--json", tmp_path / "k.json")
    figures = json.loads((tmp_path / "k.json").read_text())
    assert list(figures["loss"]) == ["base", "food", "bio"] and all_finite(figures["loss"])
    for name in ("food", "bio"):
        heldout = json.loads((store / name / "domix_manifest.json").read_text())["heldout"]
        assert figures["loss"]["base"][name] == pytest.approx(heldout["loss_before"], abs=1e-6)
        assert figures["loss"][name][name] == pytest.approx(heldout["loss_after"], abs=1e-6)
        moved = figures["movement"][name]
        assert moved["layers"] == 14 and 0 < moved["a_moved_median"] <= moved["a_moved_max"] and moved["b_norm_median"] > 0
    for row in ("base", "food", "bio"):  # the loss table's rows, then the movement table's
        assert re.search(rf"^{row}\s+[\d.]+\*?\s+[\d.]+\*?\s*$", out, re.M), row
    for row in ("food", "bio"):
        assert re.search(rf"^{row}\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M), row
    topics = figures["task_inputs"]["topics"]
    assert topics["examples"] > 0 and sum(topics["share"].values()) == pytest.approx(1) and all_finite(topics["rms"])
    assert re.search(r"^topics\s+[\d.]+\*?\s+[\d.]+\*?\s+\d+$", out, re.M)

    figures["task_inputs"] = "stale"
    (tmp_path / "k.json").write_text(json.dumps(figures))
    run("module_knowledge", store, "--only-tasks", "--tasks", f"topics={task}", "--max-length", 32, "--json", tmp_path / "k.json")
    again = json.loads((tmp_path / "k.json").read_text())
    assert again["task_inputs"] == {"topics": topics} and again["loss"] == figures["loss"]


@pytest.mark.parametrize("method", ["mixda", "mode"])
def test_module_knowledge_reads_mixda_and_mode_stores_as_they_trained(run, method, tiny_llama, corpora, tmp_path):
    """module_knowledge.py on a MixDA and a MoDE store: each domain's piece loaded by its method's own loader scores its
    held-out slice as stage 1 did while it trained (the diagonal is the manifests' "after", the base row their
    "before"), the base comes back whole after each (the base row again), the cost table reads the manifests; LoRA's
    parts are left out, and --tasks (the bridge's composition) is refused."""
    from domix.pretraining.config import PretrainConfig
    from domix.pretraining.run import pretrain

    store = tmp_path / "store"
    pretrain(PretrainConfig(model=str(tiny_llama), domains={k: str(v) for k, v in corpora.items()}, out=str(store), method=method,
                            general=str(corpora["bio"]) if method == "mixda" else None, mode_block_size=1, steps=4, batch_size=8,
                            seq_len=32, lr=1e-2, heldout_max_blocks=4))
    out = run("module_knowledge", store, "--json", tmp_path / "k.json")
    figures = json.loads((tmp_path / "k.json").read_text())
    assert figures["method"] == method and list(figures["loss"]) == ["base", "food", "bio"] and all_finite(figures["loss"])
    for name in ("food", "bio"):
        manifest = json.loads((store / name / "domix_manifest.json").read_text())
        assert figures["loss"]["base"][name] == pytest.approx(manifest["heldout"]["loss_before"], abs=1e-6)
        assert figures["loss"][name][name] == pytest.approx(manifest["heldout"]["loss_after"], abs=1e-6)
        assert figures["loss"][name][name] != pytest.approx(manifest["heldout"]["loss_before"], abs=1e-4)  # it trained
        cost = figures["cost"]["domains"][name]
        assert cost["steps"] == 4 and cost["tokens_seen"] == 4 * 8 * 32 and cost["peak_memory_mb"] > 0
        on_disk = sum(f.stat().st_size for f in (tmp_path / "store" / name).rglob("*.safetensors")) / 2**20
        assert cost["weights_mb"] == pytest.approx(on_disk) and on_disk > 0  # what the store adds to a checkout
    assert figures["cost"]["fused"] == (method == "mixda") and figures["cost"]["tokens_seen"] == 2 * 4 * 8 * 32
    assert "movement" not in figures and "how far training moved" not in out
    assert re.search(r"^store\s+[\d,]+\s+\d+\s+\d+\s+\d+\.\d$", out, re.M)  # tokens, wall s, peak MB, weights MB
    with pytest.raises(SystemExit, match="LoRA modules"):
        run("module_knowledge", store, "--tasks", "x=y")


def test_instruct_shapes_counts_the_shapes_a_run_meets_and_what_padding_costs(run, tiny_llama, task, tmp_path):
    out = run("instruct_shapes", "--task", task, "--model", tiny_llama, "--batch-size", 8, "--epochs", 2, "--max-length", 64,
              "--multiples", 1, 4, 64, "--json", tmp_path / "s.json")
    table = json.loads((tmp_path / "s.json").read_text())["table"]
    assert [r["multiple"] for r in table] == [1, 4, 64] and all(r["steps"] == 2 * 12 for r in table)  # 96 examples / 8
    assert table[0]["extra_over_longest"] == 0 and table[0]["shapes"] >= table[1]["shapes"] >= table[2]["shapes"] == 1
    assert all(r["first_meetings"] == r["shapes"] and r["computed"] >= r["tokens"] for r in table)
    assert table[2]["computed"] == 64 * 8 * 24  # every batch padded to 64 tokens
    assert re.search(r"^\s+64\s+1\s+1\s+[\d.]+%\s+[\d.]+%$", out, re.M)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "commonsense" / "obqa").is_dir(),
                    reason="../shared/data/commonsense is not here")
def test_cloze_go_trains_on_the_correct_options_and_decides_on_acc_norm(run, tiny_llama, tmp_path):
    common = ["--model", tiny_llama, "--out", tmp_path / "go", "--train-limit", 24, "--test-limit", 8, "--epochs", 1,
              "--batch-size", 8, "--max-length", 96, "--lr", 1e-3]
    out = run("cloze_go", *common, "--json", tmp_path / "d.json")
    rows = [json.loads(line) for line in (tmp_path / "go" / "obqa-cloze.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"].startswith("Question: ") and rows[0]["prompt"].endswith("\nAnswer:") and rows[0]["response"].startswith(" ")
    decision = json.loads((tmp_path / "d.json").read_text())
    base, lora = decision["scores"]["base"], decision["scores"]["lora"]
    assert base["n"] == lora["n"] == 8 and decision["gain_points"] == pytest.approx(100 * (lora["acc_norm"] - base["acc_norm"]), abs=0.01)
    assert decision["go"] == (decision["gain_points"] >= 6) and decision["training"]["steps"] > 0
    assert "go/no-go at +6 points: " in out
    trained = (tmp_path / "go" / "lora" / "result.json").stat().st_mtime_ns
    run("cloze_go", *common)  # every step's output is there: nothing trains or scores again
    assert (tmp_path / "go" / "lora" / "result.json").stat().st_mtime_ns == trained


def test_bridge_recipe_trains_tabulates_and_reads_a_comparisons_runs(run, store, task, tmp_path):
    """bridge_recipe.py: a reference (lora) and a candidate (p10x) fine-tuned on a task under --data, the table of dev
    scores and the JSON; then --read-only --reuse reads the lora run from a comparison's folder instead."""
    shutil.copytree(task, tmp_path / "data" / "tasks" / "topics")
    common = ["--modules", store, "--tasks", "topics", "--data", tmp_path / "data", "--references", "lora", "--epochs", 1,
              "--train-limit", 32, "--eval-limit", 16, "--batch-size", 16, "--max-length", 32]
    out = run("bridge_recipe", *common, "--candidates", "p10x", "--out", tmp_path / "runs", "--json", tmp_path / "recipe.json")
    results = json.loads((tmp_path / "recipe.json").read_text())
    assert results["total_rank"] == 8
    assert [(r["variant"], r["task"]) for r in results["results"]] == [("lora", "topics"), ("p10x", "topics")]
    assert all(0 <= r["dev"]["macro_f1"] <= 1 and len(r["dev_history"]) == 1 for r in results["results"])
    assert results["results"][1]["bridge_shares"] and all_finite(results["results"][1]["bridge_shares"])
    table = rows_of(out, "variant", 3)
    assert list(table) == ["majority class", "lora", "p10x"] and all(len(cells) == 2 for cells in table.values())
    assert all(math.isfinite(float(c)) for cells in table.values() for c in cells)

    comparison = tmp_path / "comparison" / "finetune" / "lora" / "topics" / "seed1"
    shutil.copytree(tmp_path / "runs" / "topics" / "lora" / "seed1", comparison)
    out = run("bridge_recipe", *common, "--candidates", "p10x", "--out", tmp_path / "elsewhere", "--read-only",
              "--reuse", tmp_path / "comparison")
    assert f"[the comparison's run {comparison}]" in out
    assert list(rows_of(out, "variant", 3)) == ["majority class", "lora"]  # the table ends: p10x was neither run nor read
    assert not (tmp_path / "elsewhere").exists()


def test_finetune_memory_measures_both_methods_in_their_own_processes(run, store, tmp_path):
    """finetune_memory.py: DoMIX and LoRA each measured in a child process, the table and the ratios finite."""
    out = run("finetune_memory", "--modules", store, "--batch-size", 2, "--seq-len", 16, "--steps", 1, "--json", tmp_path / "m.json")
    result = json.loads((tmp_path / "m.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["domix", "lora"]
    for row in result["rows"]:
        assert row["trainable"] > 0 and row["saved_for_backward_mb"] > 0 and row["peak_memory_mb"] > 0 and len(row["step_s_all"]) == 1
    assert set(result["ratios"]) == {"saved_for_backward_mb", "peak_memory_mb", "step_s_median"} and all_finite(result["ratios"])
    assert list(rows_of(out, "method", 2)) == ["domix", "lora"] and "domix / lora: saved_for_backward_mb" in out


@pytest.mark.parametrize("plain", [False, True], ids=["chunked-loss", "plain-loss"])
def test_fused_step_profile_times_and_profiles_both_ways(run, tiny_llama, tmp_path, plain):
    """fused_step_profile.py: fused and sequential steps timed, their ratio, a profiler table for each."""
    out = run("fused_step_profile", "--model", tiny_llama, "--domains", 2, "--batch-size", 2, "--seq-len", 16, "--repeats", 1,
              "--top", 3, "--json", tmp_path / "p.json", *(["--plain-loss"] if plain else []))
    assert f"2 domains x 2 x 16 tokens, forward+backward, median of 1, 1 threads, {'plain' if plain else 'chunked'} loss" in out
    assert re.search(r"^fused\s+[\d.]+ s/step\s+\d+ tokens/s$", out, re.M) and re.search(r"^sequential\s+[\d.]+ s/step", out, re.M)
    result = json.loads((tmp_path / "p.json").read_text())
    assert set(result["seconds_per_step"]) == {"fused", "sequential"} and all(s > 0 for s in result["seconds_per_step"].values())
    assert math.isfinite(result["fused_vs_sequential"]) and f"{result['fused_vs_sequential']:.2f}x" in out
    assert all("aten::" in table for table in result["profiles"].values()) and out.count("top operators by self CPU time") == 2


def test_mode_decoding_gives_the_same_tokens_with_and_without_the_cache(run, wide_llama, tmp_path):
    """mode_decoding.py: a MoDE model's greedy decoding cached and uncached, ms per token of each, the same tokens."""
    out = run("mode_decoding", "--model", wide_llama, "--block-size", 1, "--expert-layers", 1, "--domains", 2, "--prompt-tokens", 4,
              "--new-tokens", 4, "--repeats", 1, "--json", tmp_path / "d.json")
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["same_tokens"] is True and "same tokens cached and uncached: True" in out
    assert result["layers"] == 2 and all(v > 0 for v in result["ms_per_token"].values()) and all_finite(result)
    assert list(rows_of(out, "decoding", 2)) == ["cached", "uncached"]


def test_scale_table_measures_the_factor_and_fills_the_table(run, wide_llama, tmp_path):
    """scale_table.py: the activation factor measured in float32 and bfloat16, and the markdown table's four rows
    (Llama-3 8B and 70B at ranks 8 and 16), every figure finite."""
    out = run("scale_table", "--model", wide_llama, "--json", tmp_path / "s.json")
    result = json.loads((tmp_path / "s.json").read_text())
    assert [m["dtype"] for m in result["measured"]] == ["float32", "bfloat16"] and all(m["factor"] > 0 for m in result["measured"])
    assert [(r["base"], r["rank"]) for r in result["rows"]] == [(base, r) for base in ("Llama-3-8B", "Llama-3-70B") for r in (8, 16)]
    assert all_finite(result["rows"]) and all(r["gpu_hours_per_domain_ckpt"] > 0 for r in result["rows"])
    table = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| Llama-3")]
    assert len(table) == 4 and all(len(cells) == 9 for cells in table)


def test_step_rate_times_the_three_kinds_of_step(run, small_matmul, tiny_llama, store, tmp_path):
    """step_rate.py: DAP, fine-tuning and instruct steps on a given store, tokens/s and their share of the matmul rate."""
    out = run("step_rate", "--model", tiny_llama, "--store", store, "--batch-size", 2, "--seq-len", 16, "--steps", 1,
              "--json", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["matmul_gflops"] > 0 and list(result["rows"]) == ["dap", "finetune", "instruct"]
    for row in result["rows"].values():
        assert row["step_s"] > 0 and row["tokens_per_s"] == pytest.approx(32 / row["step_s"]) and len(row["runs"]) == 1
        assert all_finite(row) and row["share_of_matmul_rate"] > 0
    assert list(rows_of(out, "kind", 3)) == ["dap", "finetune", "instruct"]


def test_pretrain_throughput_runs_fused_and_ncl(run, small_matmul, monkeypatch, tiny_llama, corpora, tmp_path):
    """pretrain_throughput.py: the fused variant (a domix pretrain process) and NCL (a child of the script itself) on
    the same tokens, the table with its comparison against fused."""
    monkeypatch.setattr(script("pretrain_throughput"), "cores_given", lambda: 1)
    out = run("pretrain_throughput", "--model", tiny_llama, "--steps", 2, "--batch-size", 2, "--seq-len", 16, "--repeats", 1,
              "--variants", "fused", "ncl", *[a for n, p in corpora.items() for a in ("--domain", f"{n}={p}")],
              "--json", tmp_path / "t.json")
    result = json.loads((tmp_path / "t.json").read_text())
    assert list(result["rows"]) == ["fused", "ncl"]
    for row in result["rows"].values():
        assert row["tokens"] == 2 * 2 * 2 * 16 and row["tokens_per_s"] > 0 and row["peak_mb"] > 0 and all_finite(row)
    table = rows_of(out, "variant", 2)
    assert list(table) == ["fused", "ncl"] and table["fused"][-2:] == ["1.00", "1.00"]


def test_large_corpus_pretrains_under_the_cap_twice(run, tiny_llama, corpora, tmp_path):
    """large_corpus.py on a small corpus of the test corpora and the tiny Llama's tokenizer: both capped domix pretrain
    runs (tokenizing, then from the cache) exit cleanly, and the table and JSON say so."""
    out = run("large_corpus", "--tokens", 2e4, "--tokenizer", tiny_llama, "--corpora", *corpora.values(), "--out", tmp_path / "c.json")
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["corpus"]["passages"] > 0 and result["corpus"]["tokens_estimated"] == pytest.approx(2e4, rel=0.01)
    assert list(result["runs"]) == ["domix, first run (tokenizes into the cache)", "domix, second run (reads the cache)"]
    for name, row in result["runs"].items():
        assert row["exit"] == 0, row["last_line"]
        assert row["wall_s"] > 0 and row["peak_rss_mb"] > 0 and row["last_line"].startswith("big ")
        assert re.search(rf"^{re.escape(name)}\s+0\s+[\d.]+\s+\d+$", out, re.M)
    assert f"wrote {tmp_path / 'c.json'}" in out


def test_protocol_cost_counts_each_phase_from_the_records_and_projects_the_rest(run, tiny_llama, corpora, task, tmp_path):
    from conftest import write_compare_config

    from domix.comparison.config import CompareConfig
    from domix.comparison.run import plan

    config = write_compare_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head", "lora"], seeds=[2, 3, 4],
                                  search={"seeds": [1], "space": {"lr": [1e-3, 3e-3]}})
    selection = [j.name for j in plan(CompareConfig.from_yaml(config)) if j.role == "selection"]
    times = {name: 360.0 * (i + 1) for i, name in enumerate(selection)}  # 0.1, 0.2, 0.3, 0.4 h
    times["finetune/head/topics/seed2"] = 720.0  # one test run of the six: 0.2 h
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "job_times.json").write_text(json.dumps(times))
    printed = run("protocol_cost", config, "--budget", "2")
    rows = {" ".join(line.split()[:2]): line.split() for line in printed.splitlines()}
    # by medians: head's two at 0.15 h, lora's at 0.35 h; the test runs have none of lora's finished, so no such figure
    assert rows["selection topics"][2:] == ["4", "of", "4", "1.00", "1.00", "1.00"]
    assert rows["test topics"][2:] == ["1", "of", "6", "0.20", "1.20", "-"]  # the other five at the finished one's 0.2 h
    assert rows["all so"][2:] == ["far", "1.20", "2.20", "-"] and "projected over it" in printed
    times.update({"finetune/lora/topics/seed2": 3600.0, "finetune/lora/topics/seed3": 720.0, "finetune/lora/topics/seed4": 1080.0})
    (tmp_path / "out" / "job_times.json").write_text(json.dumps(times))
    rows = {" ".join(line.split()[:2]): line.split() for line in run("protocol_cost", config).splitlines()}
    # head's three test runs at its one finished 0.2 h, lora's at the median of 1.0, 0.2 and 0.3 h: 0.6 + 0.9
    printed = run("protocol_cost", config, "--budget", "2")
    rows = {" ".join(line.split()[:2]): line.split() for line in printed.splitlines()}
    assert rows["test topics"][2:] == ["4", "of", "6", "1.70", "2.55", "1.50"] and rows["all so"][-1] == "2.50"
    # smaller searches: the selection's 1.00 h by medians scaled by (seeds x points) / (1 x 2), the test's 1.50 h kept
    assert "  1 selection seed(s) x 2 configuration(s): 2.50 h (over 2 h)" in printed
    assert "  1 selection seed(s) x 1 configuration(s): 2.00 h (within 2 h)" in printed
    # without a search every test run is planned from the start, filed under its task all the same
    plain = write_compare_config(tmp_path / "p.yaml", tiny_llama, corpora, task, methods=["head", "lora"], seeds=[2, 3, 4])
    printed = run("protocol_cost", plain)
    rows = {" ".join(line.split()[:2]): line.split() for line in printed.splitlines()}
    assert rows["test topics"][2:] == ["4", "of", "6", "1.70", "2.55", "1.50"] and "selection topics" not in rows


def test_default_choice_averages_each_configurations_dev_over_the_tasks_from_the_selection_records(run, tiny_llama, corpora,
                                                                                                 task, tmp_path):
    import statistics

    from conftest import write_compare_config

    from domix.comparison.config import CompareConfig
    from domix.comparison.run import compare

    tasks = {"topics": {"path": str(task), "domain": "food"}, "again": {"path": str(task), "domain": "bio"}}
    config = write_compare_config(tmp_path / "c.yaml", tiny_llama, corpora, task, methods=["head", "lora"], tasks=tasks,
                                  seeds=[3, 4, 5], search={"seeds": [1, 2], "space": {"lr": [1e-3, 2e-2]}})
    compare(CompareConfig.from_yaml(config), in_process=True)
    plain = write_compare_config(tmp_path / "d.yaml", tiny_llama, corpora, task, methods=["head", "lora"])  # lr 5e-3
    printed = run("default_choice", tmp_path / "out", "--defaults", plain, "--json", tmp_path / "d.json")
    table = json.loads((tmp_path / "d.json").read_text())
    for method in ("head", "lora"):
        by_hand = {}
        for lr, label in ((1e-3, "lr=0.001"), (2e-2, "lr=0.02")):
            per_task = [statistics.fmean(json.loads((tmp_path / "out" / "search" / method / t / label / f"seed{s}" / "result.json")
                                                    .read_text())["dev"]["macro_f1"] for s in (1, 2)) for t in ("again", "topics")]
            by_hand[label] = statistics.fmean(per_task)
        rows = {r["label"]: r for r in table[method]["configurations"]}
        assert {k: rows[k]["mean"] for k in by_hand} == pytest.approx(by_hand, abs=1e-12)
        assert table[method]["across_tasks"] == max(by_hand, key=lambda k: (by_hand[k], k == "lr=0.001"))
        assert table[method]["default"] == {"lr": 5e-3} and table[method]["default_is_choice"] is False
    assert "not the choice across tasks" in printed and "<- across tasks" in printed


def test_systems_reading_states_each_system_against_the_reference_and_lora_module_with_the_papers_claims(run, tmp_path):
    """Scores made by hand: mixda 2 points below lora at every pair, domix 1 above and 3 above lora_module; mode has
    no row. The table carries those paired means, the costs, and the published claims quoted from the YAML file."""
    shift = {"lora": 0.0, "lora_module": -0.02, "domix": 0.01, "mixda": -0.02}
    runs = [{"method": m, "task": t, "seed": s, "order": None,
             "test": {"accuracy": 0.5, "macro_f1": 0.40 + d + 0.01 * s + (0.1 if t == "t2" else 0)},
             "trainable_percent": 2.0 if m == "mixda" else 1.0, "peak_memory_mb": 900.0, "wall_time_s": 60.0, "train_time_s": 50.0}
            for m, d in shift.items() for t in ("t1", "t2") for s in (1, 2, 3)]
    results = {"settings": {"reference": "lora"}, "methods": list(shift), "tasks": ["t1", "t2"], "domains": ["a", "b"],
               "runs": runs, "pretraining": [{"name": "pretrain/mixda", "method": "mixda", "order": None, "used_by": ["mixda"],
                                              "peak_memory_mb": 3000.0, "wall_time_s": 7200.0, "train_time_s": 7000.0}]}
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "results.json").write_text(json.dumps(results))
    (tmp_path / "pub.yaml").write_text("mixda:\n  claims:\n    - {claim: 'Avg +3.3 over fine-tuning', where: 'Sec 5.1'}\n"
                                       "mode:\n  claims:\n    - {claim: 'x', where: 'y', unverified: true}\n")
    printed = run("systems_reading", tmp_path / "cmp", "--published", tmp_path / "pub.yaml")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in printed.splitlines()
            if line.startswith("| ") and not line.startswith("| system")}
    assert rows["domix"][1].startswith("+1.0 [+1.0, +1.0] 6/6, above") and rows["domix"][2].startswith("+3.0 [+3.0, +3.0] 6/6")
    assert rows["mixda"][1].startswith("-2.0 [-2.0, -2.0] 0/6, below") and rows["mixda"][2].startswith("+0.0")
    assert rows["mixda"][3:] == ["2.00", "900", "60", "2.00", "3000"] and rows["domix"][6] == "-"
    assert "Not in this comparison: mode." in printed
    assert "- mixda: Avg +3.3 over fine-tuning (Sec 5.1)." in printed and "- mode: x (y) (not confirmed from the paper itself)." in printed
