"""A comparison's results as a table, a Markdown report and a self-contained HTML page with plots.

The input is the content of a comparison's ``results.json``: ``methods``, ``tasks`` and ``domains``
(the order to show), ``settings``, ``runs`` (one per finished fine-tuning run) and ``pretraining``
(the domain pre-training runs the methods depend on). Scores in the summary rows stay fractions as
recorded; the table and the report show them as percentages. Every std is the sample std (ddof=1),
0 for a single value.
"""

from __future__ import annotations

import base64
import html
import io
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from domix import atomic
from domix.errors import DomixError

METRICS = ("accuracy", "macro_f1")
DPI = 100
HEATMAP_TITLE = "each domain's share of the weight update norm the bridge feeds into each layer"

HOW_TO_READ = (
    "Scores are test-set percentages: mean ± std, the std being the sample std (ddof=1; 0 for a single "
    "value) over seeds and, for methods that depend on a domain order, over orders too. The average over "
    "tasks is computed for each (seed, order) combination first, only over combinations that have every "
    "task, then given as mean ± std over those combinations. The order spread is max − min over domain "
    "orders of the mean macro-F1 (over seeds and tasks), in F1 points; '-' where a method has no order or "
    "a single one. Trainable % is the mean share of trainable parameters; FT peak MB is the highest "
    "fine-tuning peak memory of any run; FT time s is the mean wall time of one fine-tuning run. DAP time s "
    "is the domain pre-training a method depends on: order-free pre-training runs in full plus the "
    "order-specific ones divided by the number of orders they cover (the cost of one pipeline); DAP peak MB "
    "is the highest peak memory among them. '-' means not available."
)


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
    runs = _runs(results)
    tasks = _tasks(results, runs)
    by_method = _by_method(runs)
    pretraining = results.get("pretraining") or []
    rows = [_method_row(method, by_method[method], tasks, pretraining) for method in _methods(results, runs) if by_method[method]]
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


def _runs(results: Any) -> list[dict]:
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


def _methods(results: dict, runs: list[dict]) -> list[str]:
    return _unique([*(results.get("methods") or []), *(run["method"] for run in runs)])


def _tasks(results: dict, runs: list[dict]) -> list[str]:
    return _unique([*(results.get("tasks") or []), *(run["task"] for run in runs)])


def _by_method(runs: list[dict]) -> defaultdict[str, list[dict]]:
    grouped = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    return grouped


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _mean(values) -> float | None:
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
    row.update(trainable_percent=_mean(run.get("trainable_percent") for run in runs),
               ft_peak_memory_mb=_max(run.get("peak_memory_mb") for run in runs),
               ft_time_s=_mean(run.get("wall_time_s") for run in runs))
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


def _table_cells(rows: list[dict], tasks: list[str]) -> tuple[list[str], list[list[str]]]:
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
    header, body = _table_cells(rows, tasks)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # method names left-aligned, numbers right-aligned
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(cells) for cells in body)])


# ---------------------------------------------------------------------------------------------------
# Bridge usage


def bridge_usage(results: dict, task: str) -> dict | None:
    """The bridge usage of a task averaged over runs, or None where no run of the task has any.

    Uses the runs of the first method, in the comparison's ``methods`` order, that records a bridge usage.
    Columns are put in the ``domains`` order (other domains by name) so that runs whose orders differ
    average; where runs disagree on the domains or layers, the largest group of agreeing runs is used.
    Returns ``{method, layers, domains, norms (a list of rows, one per layer), n_runs}``.
    """
    runs = _runs(results)
    by_method = _by_method(runs)
    for method in _methods(results, runs):
        usages = [run["bridge_usage"] for run in by_method[method] if run["task"] == task and run.get("bridge_usage")]
        if usages:
            return {"method": method, **_average_usage(usages, results.get("domains") or [])}
    return None


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
    grids = [(g["layers"], g["labels"], g["weights"]) for run in _by_method(_runs(results))[method]
             if run["task"] == task and (g := run.get("gate_weights"))]
    if not grids:
        return None
    layers, labels, weights, n = _average_grid(grids, results.get("domains") or [], "gate weights")
    return {"layers": layers, "labels": labels, "weights": weights, "n_runs": n}


def retention_rows(results: dict) -> list[list[str]]:
    """Per method with retention scores: the general-text LM loss of the base and after fine-tuning (means over runs)."""
    out = []
    for method, runs in _by_method(_runs(results)).items():
        scored = [run["retention"] for run in runs if run.get("retention")]
        if scored:
            base, after = _mean(r["lm_loss_base"] for r in scored), _mean(r["lm_loss_after"] for r in scored)
            out.append([method, f"{base:.4f}", f"{after:.4f}", f"{after - base:+.4f}", f"{100 * (after - base) / base:+.2f}%", str(len(scored))])
    return out


RETENTION_HEADER = ["method", "general LM loss, base", "after fine-tuning", "change", "change %", "runs"]
RETENTION_TEXT = (
    "Retention: the language-model loss on the general corpus of each fine-tuned model's backbone under the base "
    "checkpoint's own LM head, against the base model's loss on the same sequences (means over runs). A method "
    "that leaves the backbone alone keeps the base loss; a rise is general ability lost to adaptation."
)


def layer_mean_shares(domains: list[str], norms: list[list[float]]) -> dict[str, float]:
    """Each domain's share of a layer's update (its norm over the layer's sum), averaged over layers."""
    per_layer = [[n / max(sum(layer), 1e-30) for n in layer] for layer in norms]
    return {d: _mean(layer[j] for layer in per_layer) for j, d in enumerate(domains)}


def input_usage_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Per (method, task) whose runs recorded it: each domain's share of the bridged update on the task's test
    inputs, as the update started and as trained (means over runs). Returns (header, body)."""
    runs = [r for r in _runs(results) if (r.get("bridge_usage") or {}).get("inputs")]
    domains = _unique([*(results.get("domains") or []), *(d for r in runs for d in r["bridge_usage"]["domains"])])
    body = []
    for method, of_method in _by_method(runs).items():
        for task in _unique(r["task"] for r in of_method):
            shares = {when: [layer_mean_shares(r["bridge_usage"]["domains"], r["bridge_usage"]["inputs"]["norms"][when])
                             for r in of_method if r["task"] == task] for when in ("start", "end")}
            cells = [f"{_mean(s[d] for s in shares['start'] if d in s):.3f} → {_mean(s[d] for s in shares['end'] if d in s):.3f}"
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


def _compact_labels(names: list[str]) -> list[str]:
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


# ---------------------------------------------------------------------------------------------------
# Plots


def _figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly.

    Not through pyplot: ``matplotlib.use("Agg")`` would switch the whole process's backend (a
    notebook's inline plots included), and pyplot keeps every figure until it is closed. A bare
    figure needs no display and is freed with its last reference.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _legend(ax) -> None:
    # outside the axes, right of them: never over a bar or a line (savefig's tight box keeps it)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _grouped_bars(labels: list[str], series: dict[str, tuple[list, list | None]], ylabel: str, title: str) -> bytes:
    """Side-by-side bars per label (method), one per series; error bars where given; None draws no bar."""
    import numpy as np

    def array(values: list) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    fig = _figure(max(6.0, 0.8 * len(labels) + 2.0), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, (values, errors)) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, array(values), width, label=name,
               yerr=None if errors is None else array(errors), capsize=3)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_xlabel("method")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _legend(ax)
    return _png(fig)


def _scaled(values: list[float | None]) -> list[float | None]:
    return [None if v is None else 100 * v for v in values]


def _score_plots(rows: list[dict], tasks: list[str]) -> dict[str, tuple[bytes, str]]:
    methods = [row["method"] for row in rows]

    def by_task(task: str, key: str) -> list[float | None]:
        return _scaled([(row["tasks"].get(task) or {}).get(key) for row in rows])

    averages = {label: (_scaled([row[f"avg_{metric}_mean"] for row in rows]), _scaled([row[f"avg_{metric}_std"] for row in rows]))
                for label, metric in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"))}
    per_task = {task: (by_task(task, "macro_f1_mean"), by_task(task, "macro_f1_std")) for task in tasks}
    return {
        "scores.png": (_grouped_bars(methods, averages, "test score (%)", "Average over tasks (mean ± std)"),
                       "Average test accuracy and macro-F1 over tasks per method, error bars one std."),
        "scores_by_task.png": (_grouped_bars(methods, per_task, "test macro-F1 (%)", "Macro-F1 per task (mean ± std)"),
                               "Test macro-F1 per task and method, error bars one std."),
    }


def _cost_plots(rows: list[dict]) -> dict[str, tuple[bytes, str]]:
    methods = [row["method"] for row in rows]

    def series(*pairs: tuple[str, str]) -> dict[str, tuple[list, None]]:
        return {label: ([row[key] for row in rows], None) for label, key in pairs}

    return {
        "memory.png": (_grouped_bars(methods, series(("fine-tuning", "ft_peak_memory_mb"), ("pre-training", "dap_peak_memory_mb")),
                                     "peak memory (MB)", "Peak memory"),
                       "Peak memory of fine-tuning (highest over runs) and of the domain pre-training each method uses."),
        "time.png": (_grouped_bars(methods, series(("fine-tuning (per run)", "ft_time_s"), ("pre-training (per pipeline)", "dap_time_s")),
                                   "wall time (s)", "Time"),
                     "Wall time of one fine-tuning run and of the domain pre-training one pipeline of each method needs."),
    }


def _heatmap(values: list, rows: list[str], columns: list[str], xlabel: str, title: str, colorbar: str) -> bytes:
    fig = _figure(max(5.0, 1.2 * len(columns) + 3.0), min(max(3.5, 0.2 * len(rows) + 1.5), 30.0))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), _compact_labels(rows), fontsize=8 if len(rows) <= 40 else 6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=colorbar)
    return _png(fig)


def layer_grid(layers: list[str]) -> tuple[list[int], list[str], list[tuple[int, int]]] | None:
    """Layer names as (block, projection type) cells: the first number in a name is its block, what follows
    it its projection ("self_attn.q_proj", "attention.self.query"); None where a name has no number."""
    cells = []
    for name in layers:
        parts = name.split(".")
        at = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if at is None or at == len(parts) - 1:
            return None
        cells.append((int(parts[at]), ".".join(parts[at + 1:])))
    blocks = sorted({b for b, _ in cells})
    kinds = list(dict.fromkeys(k for _, k in cells))  # in the model's own order
    return blocks, _compact_labels(kinds) if len(kinds) > 1 else kinds, [(blocks.index(b), kinds.index(k)) for b, k in cells]


def _usage_plot(usage: dict, task: str) -> bytes:
    """One panel per domain: its share of each layer's bridge norm, projection types by blocks; a model
    of 30 blocks x 7 projections fits one screen where a row per layer (210) did not."""
    import numpy as np

    norms = np.asarray(usage["norms"], dtype=float)
    shares = norms / np.where(norms.sum(axis=1, keepdims=True) > 0, norms.sum(axis=1, keepdims=True), 1.0)
    grid = layer_grid(usage["layers"])
    if grid is None:  # names without block numbers: a row per layer
        return _heatmap(shares.tolist(), usage["layers"], usage["domains"], "domain", f"Bridge usage, {task}\n{HEATMAP_TITLE}", "share")
    blocks, kinds, cells = grid
    domains = usage["domains"]
    from matplotlib.colors import TwoSlopeNorm

    even = TwoSlopeNorm(vcenter=1.0 / len(domains), vmin=0.0, vmax=1.0) if len(domains) > 1 else None  # white: an even share
    fig = _figure(min(max(6.0, 0.28 * len(blocks) + 2.5), 16.0), min(1.0 + len(domains) * (0.3 * len(kinds) + 0.7), 11.0))
    axes = fig.subplots(len(domains), 1, sharex=True, squeeze=False)[:, 0]
    for d, (ax, domain) in enumerate(zip(axes, domains)):
        panel = np.full((len(kinds), len(blocks)), np.nan)
        for (b, k), share in zip(cells, shares[:, d]):
            panel[k, b] = share
        image = ax.imshow(panel, aspect="auto", cmap="RdBu_r", norm=even, interpolation="nearest")
        ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
        ax.set_ylabel(domain, fontsize=9)
    step = max(1, len(blocks) // 15)
    axes[-1].set_xticks(range(0, len(blocks), step), [str(b) for b in blocks[::step]], fontsize=7)
    axes[-1].set_xlabel("block")
    axes[0].set_title(f"Bridge usage, {task}: each domain's share of the layer's update norm "
                      f"(white: an even 1/{len(domains)}, red: more, blue: less)", fontsize=9)
    fig.colorbar(image, ax=list(axes), label="share", fraction=0.03)
    return _png(fig)


def _loss_plot(task: str, methods: list[str], by_method: dict[str, list[dict]]) -> bytes | None:
    """One line per method: its run of the task with the lowest seed (the first listed among those)."""
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    drawn = False
    for method in methods:
        candidates = [run for run in by_method[method] if run["task"] == task and run.get("loss_curve")]
        if candidates:
            steps, losses = zip(*min(candidates, key=lambda run: run["seed"])["loss_curve"])
            ax.plot(steps, losses, label=method, linewidth=1.2)
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Training loss, {task}")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _png(fig)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _plots(results: dict, rows: list[dict], tasks: list[str]) -> dict[str, tuple[bytes, str]]:
    """File name -> (PNG bytes, caption) for every plot the results allow."""
    if not rows:
        return {}
    runs = _runs(results)
    methods = [row["method"] for row in rows]
    by_method = _by_method(runs)
    images = {**_score_plots(rows, tasks), **_cost_plots(rows)}
    for task in tasks:
        usage = bridge_usage(results, task)
        if usage:
            images[f"bridge_{_slug(task)}.png"] = (
                _usage_plot(usage, task),
                f"Bridge usage on {task}: {usage['method']}, averaged over {usage['n_runs']} run(s). Each panel is one "
                "domain; a cell is that domain's share of the bridge's update norm in one layer (the shares of a layer "
                "sum to 1 over the domains), by block and projection type.")
    for method in methods:
        for task in tasks:
            gates = gate_weights(results, method, task)
            if gates:
                images[f"gates_{_slug(method)}_{_slug(task)}.png"] = (
                    _heatmap(gates["weights"], gates["layers"], gates["labels"], "branch",
                             f"{method} gate weights, {task}\nmean softmax weight of each branch over the test set", "weight"),
                    f"{method}'s mean gate weights on {task} per adapted layer or block, averaged over {gates['n_runs']} run(s).")
    for task in tasks:
        png = _loss_plot(task, methods, by_method)
        if png:
            images[f"loss_{_slug(task)}.png"] = (png, f"Training loss on {task}: each method's run with the lowest seed.")
    return images


# ---------------------------------------------------------------------------------------------------
# The report: a list of blocks rendered to Markdown and to HTML, so the two never drift apart.
# Blocks: ("h1" | "h2" | "p", text), ("list", [items]), ("table", header, body), ("image", file name, caption).


def _blocks(results: dict, rows: list[dict], tasks: list[str], images: dict[str, tuple[bytes, str]]) -> list[tuple]:
    settings = results.get("settings") or {}
    items = [f"base model: {results['base_model']}"] if results.get("base_model") else []
    items += [f"{key}: {_plain(settings[key])}" for key in ("model", "seeds", "orders") if key in settings]
    items += [f"tasks: {_plain(tasks)}", f"domains: {_plain(results.get('domains') or [])}",
              f"runs: {len(results.get('runs') or [])} fine-tuning, {len(results.get('pretraining') or [])} pre-training"]
    blocks: list[tuple] = [("h1", "Comparison report"), ("h2", "Settings"), ("list", items), ("h2", "Results")]
    if not rows:
        return [*blocks, ("p", "No finished runs yet.")]
    blocks += [("table", *_table_cells(rows, tasks)), ("h2", "How to read"), ("p", HOW_TO_READ)]
    blocks += paired_blocks(results, tasks) + search_blocks(results)
    retained = retention_rows(results)
    if retained:
        blocks += [("h2", "Retention"), ("table", RETENTION_HEADER, retained), ("p", RETENTION_TEXT)]
    header, used = input_usage_rows(results)
    if used:
        blocks += [("h2", "Bridge usage on the tasks' inputs"), ("table", header, used), ("p", INPUT_USAGE_TEXT)]
    blocks.append(("h2", "Plots"))
    return blocks + [("image", name, caption) for name, (_, caption) in images.items()]


PAIRED_TEXT = (
    "Each cell: the mean paired difference from the reference row in {metric} points (row − reference, pairs of runs "
    "at the same seed on the same task), its {level:.0%} bootstrap interval in brackets (seeds and test examples "
    "resampled together, {resamples} resamples), and how many pairs came out above the reference. 'within noise': the "
    "interval covers 0. Pooled: the mean of the tasks' differences, each task resampled on its own."
)
SEARCH_TEXT = (
    "Each method had the same number of configurations per task, declared before any run. Every configuration trained "
    "at the selection seeds {seeds} in runs that never read the test split; the table gives each one's mean dev {metric} "
    "(%) over those seeds, and the chosen one (the highest; the first declared on a tie), which then trained at the "
    "comparison's own, fresh seeds: the only runs that score test, and the only ones in the tables above."
)


def format_difference(entry: dict) -> str:
    """``+1.2 [-0.5, +2.9] 4/6`` in points (the entry's fractions x 100); ``+1.2 [no interval] 1/1`` without one."""
    interval = "no interval" if entry["low"] is None else f"{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}"
    return f"{100 * entry['mean']:+.1f} [{interval}] {entry['positive']}/{entry['pairs']}"


def verdict(entry: dict) -> str:
    """within noise, above or below (the interval against 0), with how it was resampled where that is not both."""
    if entry["within_noise"] is None:
        return "unknown: one seed, no recorded predictions"
    word = "within noise" if entry["within_noise"] else "above" if entry["low"] > 0 else "below"
    return word if entry["resampled"] == "seeds and test examples" else f"{word} ({entry['resampled']})"


def paired_blocks(results: dict, tasks: list[str]) -> list[tuple]:
    """The paired-differences tables (one per metric), or nothing without a reference."""
    table = results.get("paired")
    if not table:
        return []
    blocks: list[tuple] = [("h2", f"Paired differences against {table['reference']}"),
                           ("p", f"Reference: {table['reference']}, {table['why']}.")]
    for metric in ("macro_f1", "accuracy"):
        rows = table.get(metric) or {}
        if not rows:
            continue
        shown = [t for t in tasks if any(t in r["tasks"] for r in rows.values())]
        header = ["method", *shown, "pooled", "reading (pooled)"]
        body = [[m, *(format_difference(r["tasks"][t]) if t in r["tasks"] else "-" for t in shown), format_difference(r["pooled"]),
                 verdict(r["pooled"])] for m, r in rows.items()]
        blocks += [("p", f"{metric.replace('_', '-')}:"), ("table", header, body)]
    name = "macro-F1"
    blocks.append(("p", PAIRED_TEXT.format(metric=name, level=table["level"], resamples=table["resamples"])))
    return blocks


def search_blocks(results: dict) -> list[tuple]:
    """The selection table of a comparison with a search: each candidate's mean dev score and the choice."""
    search = results.get("search")
    if not search:
        return []
    budget = search["budget"]
    header = ["method", "task", *(f"configuration {i + 1}" for i in range(budget)), "chosen"]
    body = [[c["method"], c["task"], *(f"{x['label']}: {100 * x['mean']:.1f}" for x in c["candidates"]), c["chosen"]]
            for c in search["choices"]]
    test_s = [r.get("wall_time_s") for r in results.get("runs") or []]
    cost = (f"Cost: {search['runs']} selection runs, {search['wall_time_s'] / 3600:.1f} h of wall time; {len(test_s)} test runs, "
            f"{sum(test_s) / 3600:.1f} h (each run's own record)." if search.get("wall_time_s") and None not in test_s else "")
    return [("h2", "Selection on dev (the test split never read)"), ("table", header, body),
            ("p", SEARCH_TEXT.format(seeds=", ".join(map(str, search["seeds"])), metric=search["metric"].replace("_", "-"))
             + (" " + cost if cost else ""))]


def _plain(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *content in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {content[0]}")
        elif kind == "p":
            out.append(content[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in content[0]))
        elif kind == "table":
            header, body = content
            cells = [[cell.replace("|", "\\|") for cell in line] for line in [header, *body]]
            align = ["---", *(["---:"] * (len(header) - 1))]
            out.append("\n".join(f"| {' | '.join(line)} |" for line in [cells[0], align, *cells[1:]]))
        elif kind == "image":
            name, caption = content
            out.append(f"![{caption}](plots/{name})\n\n*{caption}*")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:0.3em 0.6em}
td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:0.9em}"""


def _html(blocks: list[tuple], images: dict[str, tuple[bytes, str]]) -> str:
    esc = html.escape
    out = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{esc(content[0])}</{kind}>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in content[0]) + "</ul>")
        elif kind == "table":
            header, body = content
            rows = ["<tr>" + "".join(f"<th>{esc(cell)}</th>" for cell in header) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in line) + "</tr>" for line in body]
            out.append("<table>" + "".join(rows) + "</table>")
        elif kind == "image":
            name, caption = content
            data = base64.b64encode(images[name][0]).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
                       f"<figcaption>{esc(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Comparison report</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(out) + "\n</body>\n</html>\n")


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``plots/*.png`` and a self-contained ``report.html`` into ``out_dir``.

    Every file is written atomically; ``plots/`` is replaced as a whole, so plots that no longer
    apply do not linger. Returns the written paths keyed by their path relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    rows = summarise(results)
    tasks = _tasks(results, _runs(results))
    images = _plots(results, rows, tasks)

    def fill(folder: Path) -> None:
        for name, (png, _) in images.items():
            (folder / name).write_bytes(png)

    atomic.replace_dir(out_dir / "plots", fill)  # before report.md, which refers to them
    blocks = _blocks(results, rows, tasks, images)
    atomic.write_text(out_dir / "report.md", _markdown(blocks))
    atomic.write_text(out_dir / "report.html", _html(blocks, images))
    return {"report.md": out_dir / "report.md", "report.html": out_dir / "report.html",
            **{f"plots/{name}": out_dir / "plots" / name for name in images}}
