"""A comparison's results summarised: a row per method (scores over seeds, orders and tasks, cost), the bridge's and
the gates' usage averaged over runs, retention and input-usage rows. The input is the content of a comparison's
``results.json``: ``methods``, ``tasks`` and ``domains`` (the order to show), ``settings``, ``runs`` (one per
finished fine-tuning run) and ``pretraining`` (the domain pre-training runs the methods depend on). Scores stay
fractions as recorded; every std is the sample std (ddof=1), 0 for a single value.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from domix.errors import DomixError

METRICS = ("accuracy", "macro_f1")


# ---------------------------------------------------------------------------------------------------
# Summary rows


def summarise(results: dict) -> list[dict]:
    """One row per method (in ``methods`` order, methods without runs left out) of scores and costs.

    Row keys: ``method``, ``n_runs``, ``n_seeds``, ``n_orders`` (distinct domain orders, 0 for an
    order-free method); ``tasks``: task -> ``{accuracy_mean, accuracy_std, macro_f1_mean, macro_f1_std,
    n_runs}`` or None; ``avg_accuracy_mean/_std``, ``avg_macro_f1_mean/_std`` and ``n_combinations``
    (the average over tasks per (seed, order) combination having every task; None where none has);
    ``order_means``: order -> ``{accuracy, macro_f1}``; ``order_spread`` (macro-F1) and
    ``order_spread_accuracy`` (max − min over orders, None for fewer than two orders);
    ``trainable_percent``, ``ft_peak_memory_mb``, ``ft_time_s``, ``dap_time_s``, ``dap_peak_memory_mb``.
    Scores are fractions. Methods or tasks that runs name but the lists do not are appended.
    """
    runs = runs_of(results)
    tasks = tasks_of(results, runs)
    by_method = group_by_method(runs)
    pretraining = results.get("pretraining") or []
    rows = [_method_row(method, by_method[method], tasks, pretraining) for method in methods_of(results, runs) if by_method[method]]
    baseline = _majority_runs(runs)
    return ([_method_row(MAJORITY, baseline, tasks, [])] if baseline else []) + rows


MAJORITY = "majority"  # the first row: always the training set's most frequent label, what learning nothing scores


def _majority_runs(runs: list[dict]) -> list[dict]:
    """One pseudo-run per task and seed of the majority-class scores the runs recorded (the same for every
    method of a task, since all see the same examples)."""
    seen = {}
    for run in runs:
        if run.get("majority") and (run["task"], run["seed"]) not in seen:
            seen[(run["task"], run["seed"])] = {"method": MAJORITY, "task": run["task"], "seed": run["seed"],
                                               "test": run["majority"]["test"]}
    return list(seen.values())


def runs_of(results: Any) -> list[dict]:
    """The runs, checked for the keys every summary needs."""
    if not isinstance(results, dict):
        raise DomixError("comparison results must be a JSON object with 'methods', 'tasks' and 'runs'")
    runs = results.get("runs") or []
    for i, run in enumerate(runs):
        missing = [key for key in ("method", "task", "seed", "test") if key not in run]
        missing += [f"test.{m}" for m in METRICS if "test" in run and m not in run["test"]]
        if missing:
            raise DomixError(f"run {i} of the comparison results lacks {', '.join(missing)}; "
                             "rerun the comparison to rewrite its results.json")
    return runs


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def methods_of(results: dict, runs: list[dict]) -> list[str]:
    return _unique([*(results.get("methods") or []), *(run["method"] for run in runs)])


def tasks_of(results: dict, runs: list[dict]) -> list[str]:
    return _unique([*(results.get("tasks") or []), *(run["task"] for run in runs)])


def group_by_method(runs: list[dict]) -> defaultdict[str, list[dict]]:
    grouped = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    return grouped


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_of(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _max(values) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _orders(runs: list[dict]) -> list[str]:
    return _unique(run["order"] for run in runs if run.get("order") is not None)


def _method_row(method: str, runs: list[dict], tasks: list[str], pretraining: list[dict]) -> dict:
    orders = _orders(runs)
    row = {"method": method, "n_runs": len(runs), "n_seeds": len(_unique(run["seed"] for run in runs)), "n_orders": len(orders),
           "tasks": {task: _task_stats([run for run in runs if run["task"] == task]) for task in tasks}}
    row.update(_average_over_tasks(runs, tasks))
    row.update(_order_spread(runs, orders))
    row.update(trainable_percent=mean_of(run.get("trainable_percent") for run in runs),
               ft_peak_memory_mb=_max(run.get("peak_memory_mb") for run in runs),
               ft_time_s=mean_of(run.get("wall_time_s") for run in runs))
    row.update(_pretraining_cost(method, pretraining))
    return row


def _task_stats(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    stats = {"n_runs": len(runs)}
    for metric in METRICS:
        stats[f"{metric}_mean"], stats[f"{metric}_std"] = _mean_std([run["test"][metric] for run in runs])
    return stats


def _average_over_tasks(runs: list[dict], tasks: list[str]) -> dict:
    """Mean over tasks within each (seed, order) combination, then mean ± std over complete combinations.

    Averaging within a combination first keeps a combination that misses a task from shifting the
    average towards the tasks it has.
    """
    combos: defaultdict[tuple, defaultdict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        combos[(run["seed"], run.get("order"))][run["task"]].append(run)
    complete = [by_task for by_task in combos.values() if all(task in by_task for task in tasks)]
    out: dict[str, Any] = {"n_combinations": len(complete)}
    for metric in METRICS:
        averages = [statistics.fmean(statistics.fmean(run["test"][metric] for run in by_task[task]) for task in tasks)
                    for by_task in complete]
        out[f"avg_{metric}_mean"], out[f"avg_{metric}_std"] = _mean_std(averages) if averages else (None, None)
    return out


def _order_spread(runs: list[dict], orders: list[str]) -> dict:
    """Each order's mean score over all its runs (seeds and tasks), and max − min over orders."""
    means = {order: {metric: statistics.fmean(run["test"][metric] for run in runs if run.get("order") == order) for metric in METRICS}
             for order in orders}

    def spread(metric: str) -> float | None:
        values = [m[metric] for m in means.values()]
        return max(values) - min(values) if len(values) > 1 else None

    return {"order_means": means, "order_spread": spread("macro_f1"), "order_spread_accuracy": spread("accuracy")}


def _pretraining_cost(method: str, pretraining: list[dict]) -> dict:
    """Pre-training time of one pipeline and the highest peak memory among the runs a method uses.

    Order-free runs (a domain module each) count in full; runs made for a domain order count divided
    by the number of orders they cover, since one fine-tuned model depends on one order's runs only.
    """
    used = [p for p in pretraining if method in (p.get("used_by") or [])]
    if not used:
        return {"dap_time_s": None, "dap_peak_memory_mb": None}
    shared = sum(p.get("wall_time_s") or 0.0 for p in used if p.get("order") is None)
    ordered = [p for p in used if p.get("order") is not None]
    per_order = sum(p.get("wall_time_s") or 0.0 for p in ordered) / max(len(_unique(p["order"] for p in ordered)), 1)
    return {"dap_time_s": shared + per_order, "dap_peak_memory_mb": _max(p.get("peak_memory_mb") for p in used)}


# ---------------------------------------------------------------------------------------------------
# The table


def _pct(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{100 * mean:.1f}±{100 * std:.1f}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_cells(rows: list[dict], tasks: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells, shared by the console table and the Markdown/HTML one."""
    header = ["method", *(f"{task} acc/F1" for task in tasks), "avg acc", "avg F1", "order spread F1",
              "trainable %", "FT peak MB", "FT time s", "DAP time s", "DAP peak MB"]
    body = []
    for row in rows:
        per_task = []
        for task in tasks:
            s = row["tasks"].get(task)
            per_task.append("-" if s is None else
                            f"{_pct(s['accuracy_mean'], s['accuracy_std'])}/{_pct(s['macro_f1_mean'], s['macro_f1_std'])}")
        spread = row["order_spread"]
        body.append([row["method"], *per_task,
                     _pct(row["avg_accuracy_mean"], row["avg_accuracy_std"]), _pct(row["avg_macro_f1_mean"], row["avg_macro_f1_std"]),
                     _num(None if spread is None else 100 * spread, 1), _num(row["trainable_percent"], 2),
                     _num(row["ft_peak_memory_mb"], 0), _num(row["ft_time_s"], 1), _num(row["dap_time_s"], 1),
                     _num(row["dap_peak_memory_mb"], 0)])
    return header, body


def format_table(rows: list[dict], tasks: list[str]) -> str:
    """A fixed-width plain-text table of :func:`summarise`'s rows, scores as percentages (mean±std)."""
    header, body = table_cells(rows, tasks)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # method names left-aligned, numbers right-aligned
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(cells) for cells in body)])


# ---------------------------------------------------------------------------------------------------
# Bridge usage


def bridge_usage(results: dict, task: str) -> dict | None:
    """The bridge usage of a task averaged over runs, or None where no run of the task has any.

    Uses the runs of the method that trains the most parameters among those that record a bridge usage (a bridge that
    trains before one frozen at its init; the comparison's ``methods`` order among equals). Columns are put in the ``domains`` order (other domains by name) so that runs whose orders differ
    average; where runs disagree on the domains or layers, the largest group of agreeing runs is used.
    Returns ``{method, layers, domains, norms (a list of rows, one per layer), n_runs}``.
    """
    runs = runs_of(results)
    by_method = group_by_method(runs)
    usages = {method: [run["bridge_usage"] for run in by_method[method] if run["task"] == task and run.get("bridge_usage")]
              for method in methods_of(results, runs)}
    shown = [m for m in usages if usages[m]]
    if not shown:
        return None
    method = max(shown, key=lambda m: (mean_of(run.get("trainable_percent") for run in by_method[m]) or 0.0, -shown.index(m)))
    return {"method": method, **_average_usage(usages[method], results.get("domains") or [])}


def _average_usage(usages: list[dict], domain_order: list[str]) -> dict:
    layers, domains, norms, n = _average_grid([(u["layers"], u["domains"], u["norms"]) for u in usages], domain_order, "bridge usage")
    return {"layers": layers, "domains": domains, "norms": norms, "n_runs": n}


def _average_grid(grids: list[tuple[list, list, list]], column_order: list[str], what: str) -> tuple[list, list, list, int]:
    """The mean of (rows, columns, values) grids whose columns are put in ``column_order`` (others by
    name); where grids disagree on their rows or columns, the largest group of agreeing ones is used.
    Returns (rows, columns, mean values, number of grids averaged)."""
    import numpy as np

    rank = {name: i for i, name in enumerate(column_order)}
    groups: dict[tuple, list] = defaultdict(list)
    for rows, columns, values in grids:
        values = np.asarray(values, dtype=float)
        if values.shape != (len(rows), len(columns)):
            raise DomixError(f"{what} with {len(rows)} rows and {len(columns)} columns has values of shape "
                             f"{values.shape}; rerun the comparison to rewrite its results.json")
        order = sorted(range(len(columns)), key=lambda i: (rank.get(columns[i], len(rank)), columns[i]))
        groups[(tuple(columns[i] for i in order), tuple(rows))].append(values[:, order])
    (columns, rows), _ = Counter({key: len(group) for key, group in groups.items()}).most_common(1)[0]
    group = groups[(columns, rows)]
    return list(rows), list(columns), np.mean(group, axis=0).tolist(), len(group)


def gate_weights(results: dict, method: str, task: str) -> dict | None:
    """A method's mean gate weights on a task, averaged over its runs (MixDA, MoDE), or None.

    Returns ``{layers, labels, weights (a row per layer), n_runs}``; labels in the ``domains``
    order, then the backbone's own branch ("ffn" or "backbone").
    """
    grids = [(g["layers"], g["labels"], g["weights"]) for run in group_by_method(runs_of(results))[method]
             if run["task"] == task and (g := run.get("gate_weights"))]
    if not grids:
        return None
    layers, labels, weights, n = _average_grid(grids, results.get("domains") or [], "gate weights")
    return {"layers": layers, "labels": labels, "weights": weights, "n_runs": n}


def retention_rows(results: dict) -> list[list[str]]:
    """Per method with retention scores: the general-text LM loss of the base and after fine-tuning (means over runs)."""
    out = []
    for method, runs in group_by_method(runs_of(results)).items():
        scored = [run["retention"] for run in runs if run.get("retention")]
        if scored:
            base, after = mean_of(r["lm_loss_base"] for r in scored), mean_of(r["lm_loss_after"] for r in scored)
            out.append([method, f"{base:.4f}", f"{after:.4f}", f"{after - base:+.4f}", f"{100 * (after - base) / base:+.2f}%", str(len(scored))])
    return out


SIGNAL_HEADER = ["method", "test accuracy", "its answers shuffled (95% range)", "p", "reading", "runs"]
SIGNAL_TEXT = (
    "Does a row know more than how often it gives each answer? Each run's test answers (by log-likelihood for an instruction "
    "task) permuted among that run's questions, {permutations:,} times: what the row's answer distribution alone scores, "
    "averaged over its runs and tasks like its accuracy. p: the share of shuffles scoring at least the row's accuracy; at "
    "p >= {level} the row shows no signal: nothing it answers depends on the question beyond its answers' frequencies."
)
SIGNIFICANCE = 0.05


def signal_rows(results: dict) -> list[list[str]]:
    """Per method whose runs kept their test answers: the shuffle test (comparison.stats.shuffle_test) over its runs, each
    run's answers a group, and the reading."""
    from domix.comparison.stats import shuffle_test

    out = []
    for method, runs in group_by_method(runs_of(results)).items():
        groups = [(r["test_predictions"]["predicted"], r["test_predictions"]["gold"]) for r in runs if r.get("test_predictions")]
        if not groups:
            continue
        test = shuffle_test(groups)
        low, high = test["shuffled_range"]
        reading = "no signal" if test["p"] >= SIGNIFICANCE else "above its answer distribution"
        out.append([method, f"{100 * test['observed']:.1f}", f"{100 * test['shuffled']:.1f} ({100 * low:.1f}-{100 * high:.1f})",
                    f"{test['p']:.3f}", reading, str(len(groups))])
    return out


def generated_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per method, on each instruction task: the generated answers' accuracy, macro-F1 and share with no label (test %,
    means over runs); nothing where no run answered by generation."""
    runs = [r for r in runs_of(results) if r.get("test_generate")]
    tasks = [t for t in tasks_of(results, runs) if any(r["task"] == t for r in runs)]
    if not tasks:
        return [], []
    body = []
    for method, own in group_by_method(runs).items():
        cells = []
        for task in tasks:
            scored = [r["test_generate"] for r in own if r["task"] == task]
            cells.append("-" if not scored else " / ".join(f"{100 * mean_of(g[k] for g in scored):.1f}"
                                                          for k in ("accuracy", "macro_f1", "unanswered")))
        body.append([method, *cells, str(len(own))])
    return ["method", *tasks, "runs"], body


GENERATED_TEXT = (
    "Instruction tasks, answered by greedy generation: accuracy / macro-F1 / the share of answers that are no label (test %, "
    "means over runs). The tables above score the same models by the label words' log-likelihood, where every example "
    "gets an answer; an answer generated that is no label counts as wrong here."
)


COST_HEADER = ["method", "trainable %", "peak MB", "x reference", "s / step", "x reference"]
COST_TEXT = (
    "What each row's fine-tuning costs against the reference row's, measured in the same comparison: the highest peak "
    "memory of its runs, and its training time per optimizer step (the runs' training time over their steps, mean over "
    "runs; dev and test scoring, loading and retention are not counted). A row that trains nothing has no step."
)


def cost_rows(results: dict, reference: str) -> list[list[str]]:
    """Per method: trainable share, peak memory and time per training step, each as a ratio to ``reference``'s."""
    by_method = group_by_method(runs_of(results))
    measured = {}
    for method, runs in by_method.items():
        steps = [r["train_time_s"] / r["steps"] for r in runs if r.get("steps") and r.get("train_time_s") is not None]
        measured[method] = (mean_of(r.get("trainable_percent") for r in runs), _max(r.get("peak_memory_mb") for r in runs),
                            mean_of(steps))
    ref = measured.get(reference)
    if ref is None:
        return []

    def ratio(value: float | None, to: float | None) -> str:
        return "-" if value is None or not to else f"{value / to:.2f}x"

    return [[method, _num(share, 2), _num(peak, 0), ratio(peak, ref[1]), _num(step, 2), ratio(step, ref[2])]
            for method, (share, peak, step) in measured.items()]


RETENTION_HEADER = ["method", "general LM loss, base", "after fine-tuning", "change", "change %", "runs"]
RETENTION_TEXT = (
    "Retention: the language-model loss on the general corpus of each fine-tuned model's backbone under the base "
    "checkpoint's own LM head, against the base model's loss on the same sequences (means over runs). A method "
    "that leaves the backbone alone keeps the base loss; a rise is general ability lost to adaptation."
)


def layer_mean_shares(domains: list[str], norms: list[list[float]]) -> dict[str, float]:
    """Each domain's share of a layer's update (its norm over the layer's sum), averaged over layers."""
    per_layer = [[n / max(sum(layer), 1e-30) for n in layer] for layer in norms]
    return {d: mean_of(layer[j] for layer in per_layer) for j, d in enumerate(domains)}


def input_usage_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per (method, task) whose runs recorded it: each domain's share of the bridged update on the task's test
    inputs, as the update started and as trained (means over runs). Returns (header, body)."""
    runs = [r for r in runs_of(results) if (r.get("bridge_usage") or {}).get("inputs")]
    domains = _unique([*(results.get("domains") or []), *(d for r in runs for d in r["bridge_usage"]["domains"])])
    body = []
    for method, of_method in group_by_method(runs).items():
        for task in _unique(r["task"] for r in of_method):
            shares = {when: [layer_mean_shares(r["bridge_usage"]["domains"], r["bridge_usage"]["inputs"]["norms"][when])
                             for r in of_method if r["task"] == task] for when in ("start", "end")}
            cells = [f"{mean_of(s[d] for s in shares['start'] if d in s):.3f} → {mean_of(s[d] for s in shares['end'] if d in s):.3f}"
                     if any(d in s for s in shares["end"]) else "" for d in domains]
            body.append([method, task, *cells, str(len(shares["end"]))])
    return ["method", "task", *domains, "runs"], body


INPUT_USAGE_TEXT = (
    "Bridge usage on each task's own inputs: domain j's part of a bridged layer's update on a test example's tokens, "
    "||B_cat diag(s) P[:, j] A_j x|| (root mean square over the real tokens of the task's first test examples), shared "
    "out over the domains per layer and averaged over layers; at the start (the modules' B, P's init) → as trained. "
    "A module's A learned its corpus's activations, so a task that draws on a domain excites that domain's part "
    "more; compare a domain's share across tasks, since the modules differ in size."
)


def compact_labels(names: list[str]) -> list[str]:
    """Layer names without the dotted parts that every name shares at its start or end."""
    parts = [name.split(".") for name in names]
    if len(parts) < 2:
        return list(names)
    lead = trail = 0
    while all(len(p) > lead + 1 for p in parts) and len({p[lead] for p in parts}) == 1:
        lead += 1
    while all(len(p) > lead + trail + 1 for p in parts) and len({p[-1 - trail] for p in parts}) == 1:
        trail += 1
    return [".".join(p[lead:len(p) - trail]) for p in parts]


