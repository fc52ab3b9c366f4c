"""Defaults that hold across tasks, decided on dev: from a comparison's search, each method's configuration with the best
dev score averaged over the tasks, against the default a user gets without a search.

A search chooses per task (``domix compare``'s ``search``: the best mean dev score over the selection seeds). A default
has to serve a task nobody tuned on, so this reads the same selection runs across tasks instead: per method and
configuration, each task's mean dev score over the selection seeds, then their mean over the tasks (every task weighs
alike) and the configuration's mean rank among the method's configurations per task. The default across tasks is the best
mean (the first declared on a tie). No test score enters: selection runs never read test, and this reads their records
through results.json's ``search`` section only.

    python benchmarks/default_choice.py benchmarks/results/compare-dap-fair \\
        --defaults configs/compare-scierc-defaults.yaml --json benchmarks/results/compare-dap-fair/default_choice.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def across_tasks(results: dict) -> dict[str, dict]:
    """Per method: its configurations (label -> per-task mean dev, mean over tasks, mean rank over tasks), the per-task
    choices, and the configuration with the best mean over the tasks (the tasks the method's every configuration ran on)."""
    search = results.get("search")
    if not search:
        raise SystemExit("this comparison has no search: nothing to choose a default from")
    by_method: dict[str, dict] = {}
    for choice in search["choices"]:
        mine = by_method.setdefault(choice["method"], {"order": [], "points": {}, "tasks": {}, "chosen_per_task": {}})
        mine["chosen_per_task"][choice["task"]] = choice["chosen"]
        ranked = sorted(choice["candidates"], key=lambda c: -c["mean"])
        for candidate in choice["candidates"]:
            label = candidate["label"]
            if label not in mine["points"]:
                mine["order"].append(label)
                mine["points"][label] = candidate["point"]
            mine["tasks"].setdefault(label, {})[choice["task"]] = {"dev": candidate["mean"], "rank": 1 + ranked.index(candidate)}
    out = {}
    for method, mine in by_method.items():
        tasks = sorted(set.intersection(*(set(per_task) for per_task in mine["tasks"].values())))
        rows = []
        for label in mine["order"]:
            per_task = mine["tasks"][label]
            rows.append({"label": label, "point": mine["points"][label], "dev": {t: per_task[t]["dev"] for t in tasks},
                         "mean": statistics.fmean(per_task[t]["dev"] for t in tasks),
                         "mean_rank": statistics.fmean(per_task[t]["rank"] for t in tasks)})
        best = max(range(len(rows)), key=lambda i: (rows[i]["mean"], -i))
        out[method] = {"tasks": tasks, "configurations": rows, "chosen_per_task": mine["chosen_per_task"],
                       "across_tasks": rows[best]["label"], "point": rows[best]["point"],
                       "margin": rows[best]["mean"] - max((r["mean"] for i, r in enumerate(rows) if i != best), default=rows[best]["mean"])}
    return out


def defaults_of(config: Path, methods: list[str]) -> dict[str, dict]:
    """What each method runs with where no search chooses: the comparison config's settings as its jobs get them."""
    from domix.comparison.config import CompareConfig
    from domix.comparison.run import plan

    cfg = CompareConfig.from_yaml(config)
    out = {}
    for job in plan(cfg):
        method = job.info.get("method")
        if job.role == "test" and method in methods and method not in out:
            out[method] = job.settings
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a comparison's out folder with results.json from a search")
    parser.add_argument("--defaults", help="a comparison config without a search: the settings a user gets, to set beside")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)
    results = json.loads((Path(args.folder) / "results.json").read_text())
    table = across_tasks(results)
    defaults = defaults_of(Path(args.defaults), list(table)) if args.defaults else {}
    metric = results["search"]["metric"]
    print(f"dev {metric} x100 per task (mean over the selection seeds {results['search']['seeds']}), their mean over the "
          "tasks and the mean rank; the default across tasks is the best mean")
    for method, entry in table.items():
        print(f"\n{method}: chosen per task {', '.join(f'{t} {c}' for t, c in entry['chosen_per_task'].items())}")
        print(f"  {'configuration':22}" + "".join(f"{t:>12}" for t in entry["tasks"]) + f"{'mean':>8}{'rank':>6}")
        for row in entry["configurations"]:
            mark = " <- across tasks" if row["label"] == entry["across_tasks"] else ""
            print(f"  {row['label']:22}" + "".join(f"{100 * row['dev'][t]:12.1f}" for t in entry["tasks"])
                  + f"{100 * row['mean']:8.1f}{row['mean_rank']:6.2f}{mark}")
        if method in defaults:
            given = {k: defaults[method].get(k) for k in entry["point"]}
            same = all(given[k] == v for k, v in entry["point"].items())
            print(f"  without a search (--defaults' settings): {given}: "
                  + ("the same as the choice across tasks" if same else f"not the choice across tasks ({entry['point']}); "
                     f"it leads the next by {100 * entry['margin']:.1f} points of mean dev {metric}"))
            entry["default"], entry["default_is_choice"] = given, same
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
