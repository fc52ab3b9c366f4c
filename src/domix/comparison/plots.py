"""The report's plots (PNG bytes from matplotlib, imported on first use): scores, cost, the bridge's usage as
heatmaps, the loss curves."""

from __future__ import annotations

import io
import re

from domix.comparison.summary import bridge_usage, compact_labels, gate_weights, group_by_method, runs_of

DPI = 100
HEATMAP_TITLE = "each domain's share of the weight update norm the bridge feeds into each layer"


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
    ax.set_yticks(range(len(rows)), compact_labels(rows), fontsize=8 if len(rows) <= 40 else 6)
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
    return blocks, compact_labels(kinds) if len(kinds) > 1 else kinds, [(blocks.index(b), kinds.index(k)) for b, k in cells]


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


def all_plots(results: dict, rows: list[dict], tasks: list[str]) -> dict[str, tuple[bytes, str]]:
    """File name -> (PNG bytes, caption) for every plot the results allow."""
    if not rows:
        return {}
    runs = runs_of(results)
    methods = [row["method"] for row in rows]
    by_method = group_by_method(runs)
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


