"""Comparison report: summary numbers checked by hand, files and plots written as promised."""

from __future__ import annotations

import copy
import statistics

import pytest

from domix.comparison.report import write_report
from domix.comparison.summary import (bridge_usage, compact_labels, format_table, gate_weights, generated_rows, input_usage_rows,
                                   retention_rows, signal_rows, summarise)
from domix.errors import DomixError

TASKS = ["t1", "t2"]
SEEDS = [1, 2]
ORDERS = ["a>b", "b>a"]
TASK_BASE = {"t1": 0.60, "t2": 0.80}
SEED_SHIFT = {1: 0.00, 2: 0.02}
ORDER_SHIFT = {"a>b": 0.00, "b>a": 0.04}
LAYERS = ["model.layers.0.q_proj", "model.layers.1.q_proj"]


def f1(method: str, task: str, seed: int, order: str | None) -> float:
    """domix: base + seed + order shift; lora: 0.1 below domix's first order."""
    return TASK_BASE[task] + SEED_SHIFT[seed] + (ORDER_SHIFT[order] if order else -0.10)


def run(method: str, task: str, seed: int, order: str | None, **extra) -> dict:
    score = f1(method, task, seed, order)
    return {"method": method, "task": task, "seed": seed, "order": order,
            "test": {"accuracy": score + 0.1, "macro_f1": score, "micro_f1": score + 0.1},
            "trainable_percent": 1.0 if method == "lora" else 0.5 + seed, "peak_memory_mb": 100.0 * seed,
            "wall_time_s": 10.0 * seed, "train_time_s": 9.0 * seed, "loss_curve": [[0, 2.0], [10, 1.0 + seed]],
            "bridge_usage": None, **extra}


def usage(order: str, seed: int) -> dict:
    """Norms of a (layers × domains) grid: domain a's column 1, 3 and b's 2, 4, plus seed; listed in the order's domain order."""
    norms = {"a": [1.0 + seed, 3.0 + seed], "b": [2.0 + seed, 4.0 + seed]}
    domains = order.split(">")
    return {"domains": domains, "layers": LAYERS, "norms": [[norms[d][i] for d in domains] for i in range(len(LAYERS))]}


def make_results() -> dict:
    runs = [run("lora", task, seed, None) for task in TASKS for seed in SEEDS]
    runs += [run("domix", task, seed, order, bridge_usage=usage(order, seed) if task == "t1" else None)
             for task in TASKS for seed in SEEDS for order in ORDERS]
    return {
        "settings": {"model": "tiny-llama", "seeds": SEEDS, "orders": ORDERS, "lr": 1e-3},
        "methods": ["full", "lora", "domix"],  # full has no runs: left out
        "tasks": TASKS,
        "domains": ["b", "a"],
        "runs": runs,
        "pretraining": [
            {"name": "domix-a", "method": "domix", "order": None, "peak_memory_mb": 1000.0, "wall_time_s": 100.0,
             "train_time_s": 90.0, "used_by": ["domix"]},
            {"name": "domix-b", "method": "domix", "order": None, "peak_memory_mb": 1500.0, "wall_time_s": 200.0,
             "train_time_s": 180.0, "used_by": ["domix"]},
        ],
    }


def rows_by_method(results: dict) -> dict[str, dict]:
    return {row["method"]: row for row in summarise(results)}


def test_rows_follow_methods_order_and_skip_methods_without_runs():
    rows = summarise(make_results())
    assert [row["method"] for row in rows] == ["lora", "domix"]
    assert set(rows[0]) == {"method", "n_runs", "n_seeds", "n_orders", "tasks", "n_combinations",
                            "avg_accuracy_mean", "avg_accuracy_std", "avg_macro_f1_mean", "avg_macro_f1_std",
                            "order_means", "order_spread", "order_spread_accuracy", "trainable_percent",
                            "ft_peak_memory_mb", "ft_time_s", "dap_time_s", "dap_peak_memory_mb"}


def test_per_task_mean_and_sample_std_over_seeds_and_orders():
    domix = rows_by_method(make_results())["domix"]
    t1 = domix["tasks"]["t1"]
    values = [0.60, 0.64, 0.62, 0.66]  # seeds 1, 2 × orders a>b, b>a
    assert t1["n_runs"] == 4
    assert t1["macro_f1_mean"] == pytest.approx(0.63)
    assert t1["macro_f1_std"] == pytest.approx(statistics.stdev(values))
    assert t1["macro_f1_std"] == pytest.approx((0.002 / 3) ** 0.5)  # ddof=1 by hand: (2·0.03² + 2·0.01²)/3
    assert t1["accuracy_mean"] == pytest.approx(0.73)
    assert domix["n_seeds"] == 2 and domix["n_orders"] == 2 and domix["n_runs"] == 8


def test_average_over_tasks_per_seed_and_order_combination():
    domix = rows_by_method(make_results())["domix"]
    combos = [0.70, 0.74, 0.72, 0.76]  # (t1 + t2) / 2 per (seed, order)
    assert domix["n_combinations"] == 4
    assert domix["avg_macro_f1_mean"] == pytest.approx(0.73)
    assert domix["avg_macro_f1_std"] == pytest.approx(statistics.stdev(combos))
    assert domix["avg_accuracy_mean"] == pytest.approx(0.83)

    lora = rows_by_method(make_results())["lora"]
    assert lora["n_combinations"] == 2  # one per seed
    assert lora["avg_macro_f1_mean"] == pytest.approx(0.61)
    assert lora["avg_macro_f1_std"] == pytest.approx(statistics.stdev([0.60, 0.62]))


def test_combinations_missing_a_task_are_left_out_of_the_average():
    results = make_results()
    results["runs"] = [r for r in results["runs"] if (r["method"], r["task"], r["seed"], r["order"]) != ("domix", "t2", 2, "b>a")]
    domix = rows_by_method(results)["domix"]
    assert domix["n_combinations"] == 3
    assert domix["avg_macro_f1_mean"] == pytest.approx(0.72)  # 0.70, 0.74, 0.72; not pulled up by t1's lone 0.66
    assert domix["avg_macro_f1_std"] == pytest.approx(0.02)
    assert domix["tasks"]["t2"]["n_runs"] == 3 and domix["tasks"]["t1"]["n_runs"] == 4


def test_no_complete_combination_gives_no_average():
    results = make_results()
    results["runs"] = [r for r in results["runs"] if not (r["method"] == "lora" and r["task"] == "t2")]
    lora = rows_by_method(results)["lora"]
    assert lora["n_combinations"] == 0 and lora["avg_macro_f1_mean"] is None and lora["avg_accuracy_std"] is None
    assert lora["tasks"]["t2"] is None
    assert "lora" in format_table(summarise(results), TASKS)


def test_order_spread_is_max_minus_min_of_order_means():
    domix = rows_by_method(make_results())["domix"]
    a_b = statistics.fmean([0.60, 0.62, 0.80, 0.82])  # order a>b over seeds and tasks
    b_a = statistics.fmean([0.64, 0.66, 0.84, 0.86])
    assert domix["order_means"]["a>b"]["macro_f1"] == pytest.approx(a_b)
    assert domix["order_spread"] == pytest.approx(b_a - a_b) == pytest.approx(0.04)
    assert domix["order_spread_accuracy"] == pytest.approx(0.04)


def test_order_free_method_and_single_order_have_no_spread():
    results = make_results()
    lora = rows_by_method(results)["lora"]
    assert lora["order_spread"] is None and lora["order_spread_accuracy"] is None
    assert lora["n_orders"] == 0 and lora["order_means"] == {}
    results["runs"] = [r for r in results["runs"] if r["order"] != "b>a"]
    assert rows_by_method(results)["domix"]["order_spread"] is None


def test_costs():
    rows = rows_by_method(make_results())
    domix, lora = rows["domix"], rows["lora"]
    assert domix["trainable_percent"] == pytest.approx(2.0)  # seeds give 1.5 and 2.5
    assert domix["ft_peak_memory_mb"] == 200.0 and domix["ft_time_s"] == pytest.approx(15.0)
    assert domix["dap_time_s"] == pytest.approx(300.0)  # order-free modules count in full
    assert domix["dap_peak_memory_mb"] == 1500.0
    assert lora["dap_time_s"] is None and lora["dap_peak_memory_mb"] is None


def test_order_specific_pretraining_time_is_per_order():
    results = make_results()
    results["methods"].append("ncl")
    results["runs"] += [run("ncl", task, seed, order) for task in TASKS for seed in SEEDS for order in ORDERS]
    results["pretraining"] += [
        {"name": "ncl-a>b", "method": "ncl", "order": "a>b", "peak_memory_mb": 700.0, "wall_time_s": 50.0, "used_by": ["ncl"]},
        {"name": "ncl-b>a", "method": "ncl", "order": "b>a", "peak_memory_mb": 800.0, "wall_time_s": 70.0, "used_by": ["ncl"]},
    ]
    ncl = rows_by_method(results)["ncl"]
    assert ncl["dap_time_s"] == pytest.approx(60.0)  # (50 + 70) / 2 orders
    assert ncl["dap_peak_memory_mb"] == 800.0


def test_format_table_is_fixed_width_with_percentages():
    table = format_table(summarise(make_results()), TASKS)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, lora, domix
    assert len({len(line) for line in lines}) == 1
    headings = ("t1 acc/F1", "avg acc", "avg F1", "order spread F1", "trainable %", "FT peak MB", "FT time s", "DAP time s", "DAP peak MB")
    assert all(heading in lines[0] for heading in headings)
    domix = lines[3]
    assert domix.startswith("domix")
    assert "73.0±2.6/63.0±2.6" in domix  # t1 accuracy / macro-F1
    assert "4.0" in domix.split()  # order spread in F1 points
    assert "300.0" in domix.split() and "1500" in domix.split()
    assert lines[2].split()[5] == "-"  # lora: no spread


def test_bridge_usage_averages_runs_with_columns_in_domains_order():
    results = make_results()
    got = bridge_usage(results, "t1")
    assert got["method"] == "domix" and got["n_runs"] == 4
    assert got["domains"] == ["b", "a"] and got["layers"] == LAYERS
    # mean over seeds 1, 2 of (value + seed) = value + 1.5, whatever order listed the columns
    assert [pytest.approx(row) for row in ([3.5, 2.5], [5.5, 4.5])] == got["norms"]
    assert bridge_usage(results, "t2") is None


def test_input_usage_table_shares_each_layer_then_averages_layers_and_runs(tmp_path):
    results = make_results()
    t1 = [r for r in results["runs"] if r["method"] == "domix" and r["task"] == "t1"]
    for r in t1:  # start: a twice b's size in layer 0, equal in layer 1; end: the run's usage norms
        norms = {"start": [[2.0, 1.0], [1.0, 1.0]], "end": r["bridge_usage"]["norms"]}
        if r["bridge_usage"]["domains"] == ["b", "a"]:
            norms["start"] = [row[::-1] for row in norms["start"]]
        r["bridge_usage"]["inputs"] = {"examples": 3, "tokens": 30, "norms": norms}
    header, body = input_usage_rows(results)
    assert header == ["method", "task", "b", "a", "runs"] and len(body) == 1
    # a's share at the end, per run: mean over layers of (1+s)/(3+2s) and (3+s)/(7+2s); then the mean over seeds 1, 2 (two orders each)
    a_end = statistics.fmean(statistics.fmean([(1 + s) / (3 + 2 * s), (3 + s) / (7 + 2 * s)]) for s in (1, 1, 2, 2))
    a_start = (2 / 3 + 1 / 2) / 2
    assert body[0] == ["domix", "t1", f"{1 - a_start:.3f} → {1 - a_end:.3f}", f"{a_start:.3f} → {a_end:.3f}", "4"]
    markdown = write_report(results, tmp_path / "out")["report.md"].read_text()
    assert "## Bridge usage on the tasks' inputs" in markdown and f"{a_start:.3f} → {a_end:.3f}" in markdown
    assert input_usage_rows(make_results())[1] == []  # runs recorded before domix recorded it: no table


def test_bridge_usage_uses_the_largest_agreeing_group():
    results = make_results()
    odd = next(r for r in results["runs"] if r["method"] == "domix" and r["task"] == "t1")
    odd["bridge_usage"] = {"domains": ["a", "b"], "layers": ["other"], "norms": [[9.0, 9.0]]}
    got = bridge_usage(results, "t1")
    assert got["n_runs"] == 3 and got["layers"] == LAYERS


def gates(labels: list[str], seed: int) -> dict:
    """Gate weights per layer: branch a 0.2 (+0.1 per seed), b 0.3, backbone the rest; listed in ``labels`` order."""
    weights = {"a": 0.2 + 0.1 * seed, "b": 0.3, "backbone": 0.5 - 0.1 * seed}
    return {"layers": LAYERS, "labels": labels, "weights": [[weights[label] for label in labels] for _ in LAYERS]}


def test_gate_weights_average_runs_in_the_domains_order_and_retention_rows(tmp_path):
    results = make_results()
    results["runs"] += [run("mode", "t1", seed, None, gate_weights=gates(labels, seed),
                            retention={"lm_loss_base": 2.0, "lm_loss_after": 2.0 + 0.1 * seed})
                        for seed, labels in ((1, ["a", "b", "backbone"]), (2, ["backbone", "b", "a"]))]
    got = gate_weights(results, "mode", "t1")
    assert got["labels"] == ["b", "a", "backbone"] and got["n_runs"] == 2  # domains order b, a; then the rest
    assert all(row == pytest.approx([0.3, 0.35, 0.35]) for row in got["weights"]) and len(got["weights"]) == 2
    assert gate_weights(results, "mode", "t2") is None and gate_weights(results, "domix", "t1") is None
    assert retention_rows(results) == [["mode", "2.0000", "2.1500", "+0.1500", "+7.50%", "2"]]
    written = write_report(results, tmp_path)
    assert "plots/gates_mode_t1.png" in written
    markdown = written["report.md"].read_text()
    assert "## Retention" in markdown and "| mode | 2.0000 | 2.1500 | +0.1500 | +7.50% | 2 |" in markdown


def test_generated_answers_are_tabled_per_instruction_task_by_hand():
    results = make_results()
    assert generated_rows(results) == ([], [])  # no run answered by generation: no table
    answers = {1: {"accuracy": 0.5, "macro_f1": 0.25, "unanswered": 0.1}, 2: {"accuracy": 0.7, "macro_f1": 0.35, "unanswered": 0.3}}
    results["runs"] = [r for r in results["runs"] if not (r["method"] == "lora" and r["task"] == "t2")]
    results["runs"] += [run("lora", "t2", seed, None, test_generate=answers[seed]) for seed in (1, 2)]
    header, body = generated_rows(results)
    assert header == ["method", "t2", "runs"]  # only the task some run answered by generation
    assert body == [["lora", "60.0 / 30.0 / 20.0", "2"]]  # the means over the two runs, in %


def test_a_row_answering_one_label_shows_no_signal_and_one_answering_right_does():
    """The shuffle test on hand-made answers: a constant answer scores the same however shuffled (p = 1); answers equal to
    the gold score 100 where their shuffles, with these balanced labels, average near a third."""
    gold = [0, 1, 2] * 10
    results = {"methods": ["constant", "oracle"], "tasks": ["t"], "runs": []}
    for seed in (1, 2):
        for method, predicted in (("constant", [0] * 30), ("oracle", gold)):
            results["runs"].append({"method": method, "task": "t", "seed": seed, "test": {"accuracy": 0.0, "macro_f1": 0.0},
                                    "test_predictions": {"predicted": predicted, "gold": gold}})
    rows = {r[0]: r for r in signal_rows(results)}
    assert rows["constant"][1:] == ["33.3", "33.3 (33.3-33.3)", "1.000", "no signal", "2"]
    assert rows["oracle"][1] == "100.0" and rows["oracle"][4] == "above its answer distribution"
    assert float(rows["oracle"][3]) < 0.001 and abs(float(rows["oracle"][2].split()[0]) - 100 / 3) < 3
    assert signal_rows(make_results()) == []  # runs without their answers: no table


def test_compact_layer_labels():
    assert compact_labels(LAYERS) == ["0", "1"]
    assert compact_labels(["m.layers.0.q_proj", "m.layers.0.v_proj", "m.layers.1.q_proj"]) == ["0.q_proj", "0.v_proj", "1.q_proj"]
    assert compact_labels(["only.one"]) == ["only.one"]


def test_write_report(tmp_path):
    written = write_report(make_results(), tmp_path / "out")
    expected = {"report.md", "report.html", "plots/scores.png", "plots/scores_by_task.png", "plots/memory.png", "plots/time.png",
                "plots/bridge_t1.png", "plots/loss_t1.png", "plots/loss_t2.png"}
    assert set(written) == expected  # a heatmap only for t1, the task with bridge usage
    for key, path in written.items():
        assert path == tmp_path / "out" / key and path.is_file()
        if key.endswith(".png"):
            assert path.read_bytes().startswith(b"\x89PNG")
    plots = {key.removeprefix("plots/") for key in expected if key.startswith("plots/")}
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == plots  # nothing else in plots/

    markdown = written["report.md"].read_text()
    for key in written:
        if key.startswith("plots/"):
            assert f"]({key})" in markdown
    assert "tiny-llama" in markdown and "a>b, b>a" in markdown and "lr" not in markdown.split("## Results")[0]
    assert "| domix |" in markdown and "sample std" in markdown and "max − min" in markdown

    page = written["report.html"].read_text()
    assert page.count("data:image/png;base64,") == 7
    assert 'src="http' not in page and "plots/" not in page and "<link" not in page and "<script" not in page
    assert "a&gt;b, b&gt;a" in page and "<table>" in page


def test_write_report_replaces_plots_that_no_longer_apply(tmp_path):
    results = make_results()
    write_report(results, tmp_path)
    for r in results["runs"]:
        r["bridge_usage"] = None
    written = write_report(results, tmp_path)
    assert "plots/bridge_t1.png" not in written and not (tmp_path / "plots" / "bridge_t1.png").exists()
    assert "bridge_t1" not in (tmp_path / "report.md").read_text()


def test_write_report_without_runs(tmp_path):
    results = {**make_results(), "runs": []}
    written = write_report(results, tmp_path)
    assert set(written) == {"report.md", "report.html"}
    assert "No finished runs yet." in written["report.md"].read_text()


def test_malformed_run_is_a_user_error():
    results = make_results()
    broken = copy.deepcopy(results["runs"][0])
    del broken["test"]["macro_f1"]
    results["runs"].append(broken)
    with pytest.raises(DomixError, match="test.macro_f1"):
        summarise(results)
    with pytest.raises(DomixError, match="JSON object"):
        summarise([])


def test_bridge_usage_is_drawn_as_blocks_by_projection_types_on_one_screen(tmp_path):
    import struct

    from domix.comparison.plots import _usage_plot, layer_grid

    kinds = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    layers = [f"model.layers.{b}.{k}" for b in range(30) for k in kinds]  # SmolLM2-135M: 210 adapted layers
    blocks, labels, cells = layer_grid(layers)
    assert blocks == list(range(30)) and labels == kinds and cells[8] == (1, 1)
    bert = layer_grid(["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.output.dense", "bert.encoder.layer.11.output.dense"])
    assert bert == ([0, 11], ["attention.self.query", "output.dense"], [(0, 0), (0, 1), (1, 1)])
    assert layer_grid(["pooler.dense", "classifier"]) is None
    norms = [[1.0, 1.0, 2.0]] * len(layers)
    png = _usage_plot({"layers": layers, "domains": ["a", "b", "c"], "norms": norms}, "t")
    width, height = struct.unpack(">II", png[16:24])  # the PNG header's size
    assert width <= 1600 and height <= 1000, (width, height)  # one screen, where a row per layer was 210 rows


def test_the_html_report_is_well_formed(tmp_path):
    from html.parser import HTMLParser

    class Check(HTMLParser):
        VOID = {"meta", "img", "br", "hr", "link", "input"}

        def __init__(self):
            super().__init__()
            self.open, self.images = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs))
            elif tag not in self.VOID:
                self.open.append(tag)

        def handle_endtag(self, tag):
            assert self.open and self.open[-1] == tag, (self.open[-3:], tag)
            self.open.pop()

    page = write_report(make_results(), tmp_path / "out")["report.html"].read_text()
    check = Check()
    check.feed(page)
    assert check.open == [] and page.lstrip().lower().startswith("<!doctype html>")
    assert len(check.images) == 7 and all(i["src"].startswith("data:image/png;base64,") and i.get("alt") for i in check.images)
