"""A comparison's report: Markdown and a self-contained HTML page with plots, rendered from one list of blocks.

The input is the content of a comparison's ``results.json``: ``methods``, ``tasks`` and ``domains``
(the order to show), ``settings``, ``runs`` (one per finished fine-tuning run) and ``pretraining``
(the domain pre-training runs the methods depend on). Scores in the summary rows stay fractions as
recorded; the table and the report show them as percentages. Every std is the sample std (ddof=1),
0 for a single value.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from domix import atomic
from domix.comparison.plots import all_plots
from domix.comparison.summary import (COST_HEADER, COST_TEXT, GENERATED_TEXT, INPUT_USAGE_TEXT, RETENTION_HEADER, RETENTION_TEXT,
                                   SIGNAL_HEADER, SIGNAL_TEXT, SIGNIFICANCE, cost_rows, generated_rows, input_usage_rows,
                                   retention_rows, runs_of, signal_rows, summarise, table_cells, tasks_of)

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
# The report: a list of blocks rendered to Markdown and to HTML, so the two never drift apart.
# Blocks: ("h1" | "h2" | "p", text), ("list", [items]), ("table", header, body), ("image", file name, caption).


def title(tasks: list[str]) -> str:
    """The report's title, naming what was compared (a browser tab tells two reports apart)."""
    return f"Comparison report: {', '.join(tasks)}" if tasks else "Comparison report"


def _blocks(results: dict, rows: list[dict], tasks: list[str], images: dict[str, tuple[bytes, str]]) -> list[tuple]:
    settings = results.get("settings") or {}
    items = [f"base model: {results['base_model']}"] if results.get("base_model") else []
    items += [f"{key}: {_plain(settings[key])}" for key in ("model", "seeds", "orders") if key in settings]
    items += [f"tasks: {_plain(tasks)}", f"domains: {_plain(results.get('domains') or [])}",
              f"runs: {len(results.get('runs') or [])} fine-tuning, {len(results.get('pretraining') or [])} pre-training"]
    blocks: list[tuple] = [("h1", title(tasks)), ("h2", "Settings"), ("list", items), ("h2", "Results")]
    if not rows:
        return [*blocks, ("p", "No finished runs yet.")]
    blocks += [("table", *table_cells(rows, tasks)), ("h2", "How to read"), ("p", HOW_TO_READ)]
    blocks += paired_blocks(results, tasks) + search_blocks(results)
    reference = (results.get("paired") or {}).get("reference")
    costs = cost_rows(results, reference) if reference else []
    if costs:
        blocks += [("h2", f"Cost against {reference}"), ("table", COST_HEADER, costs), ("p", COST_TEXT)]
    shown = signal_rows(results)
    if shown:
        from domix.comparison.stats import RESAMPLES

        blocks += [("h2", "Beyond the answer distribution"), ("table", SIGNAL_HEADER, shown),
                   ("p", SIGNAL_TEXT.format(permutations=RESAMPLES, level=SIGNIFICANCE))]
    header, generated = generated_rows(results)
    if generated:
        blocks += [("h2", "Generated answers"), ("table", header, generated), ("p", GENERATED_TEXT)]
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
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
            f"<title>{esc(blocks[0][1])}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(out) + "\n</body>\n</html>\n")


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``plots/*.png`` and a self-contained ``report.html`` into ``out_dir``.

    Every file is written atomically; ``plots/`` is replaced as a whole, so plots that no longer
    apply do not linger. Returns the written paths keyed by their path relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    rows = summarise(results)
    tasks = tasks_of(results, runs_of(results))
    images = all_plots(results, rows, tasks)

    def fill(folder: Path) -> None:
        for name, (png, _) in images.items():
            (folder / name).write_bytes(png)

    atomic.replace_dir(out_dir / "plots", fill)  # before report.md, which refers to them
    blocks = _blocks(results, rows, tasks, images)
    atomic.write_text(out_dir / "report.md", _markdown(blocks))
    atomic.write_text(out_dir / "report.html", _html(blocks, images))
    return {"report.md": out_dir / "report.md", "report.html": out_dir / "report.html",
            **{f"plots/{name}": out_dir / "plots" / name for name in images}}
