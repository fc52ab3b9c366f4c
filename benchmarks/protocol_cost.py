"""What a comparison under the fair protocol cost on this machine, from its own records, against a wall-time budget.

    python benchmarks/protocol_cost.py configs/compare-dap-fair.yaml \\
        --speed benchmarks/results/finetune_speed/restaurant-lora.json --budget 12

Reads the comparison's plan (its config: every job it has, the test runs counted from its seeds) and OUT/job_times.json
(each finished job's wall time as ``domix compare`` measured it): per task, the selection runs and the test runs, how
many have finished and their hours, and where some remain, the hours they project to at the mean of those finished;
the pre-training it ran; the total against ``--budget`` hours; "by medians", each method's jobs at its median job time
there (what an idle machine would take: jobs run beside other work run long), and what smaller searches would cost by
those medians (fewer selection seeds or configurations); a given store's own training time, apart. With
``--speed`` (a benchmarks/finetune_speed.py result: float32 with random batches against bfloat16 autocast with
length-grouped batches, side by side), what the same jobs would have cost before that speed work: the fine-tuning
hours times the measured ratio of the two variants' median wall times (an estimate: one task, one method, measured).
Times measured while other work shared the CPU run long; the records cannot tell which did.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PHASES = {"pretrain": "pre-training", "adapter": "adapters", "selection": "selection", "test": "test"}


def costs(config: Path) -> tuple[dict, dict]:
    """Per (phase, task): jobs planned, jobs finished and their hours; and each given store's own training hours."""
    from domix.comparison.config import CompareConfig
    from domix.comparison.run import TIMES_FILE, plan

    cfg = CompareConfig.from_yaml(config)
    out = Path(cfg.out)
    times = json.loads((out / TIMES_FILE).read_text()) if (out / TIMES_FILE).is_file() else {}
    table: dict = defaultdict(lambda: {"planned": 0, "finished": 0, "hours": 0.0, "methods": defaultdict(lambda: {"planned": 0, "times": []})})
    given = {}
    for job in plan(cfg):
        if job.given:  # trained before, by another run: its wall time from its manifests, apart
            from domix.store import store_wall_time

            manifests = [json.loads(m.read_text()) for m in sorted(job.out.glob("*/domix_manifest.json"))]
            given[job.info["method"]] = (str(job.out), (store_wall_time(manifests) or 0.0) / 3600)
            continue
        entry = table[(PHASES[job.role], job.info["task"] if job.role in ("selection", "test") else "-")]
        entry["planned"] += 1
        mine = entry["methods"][job.info.get("method", job.name)]
        mine["planned"] += 1
        if job.name in times:
            entry["finished"] += 1
            entry["hours"] += times[job.name] / 3600
            mine["times"].append(times[job.name] / 3600)
    # with a search the test runs are planned once it has chosen: each method's choice per task at its seeds
    for task in cfg.tasks if cfg.search is not None else []:
        entry = table[("test", task.name)]
        for m in cfg.methods:
            entry["methods"][m]["planned"] = len(cfg.method_seeds.get(m, cfg.seeds))
        entry["planned"] = sum(m["planned"] for m in entry["methods"].values())
        for name, seconds in times.items():
            kind, method, task_name = (name.split("/") + ["", ""])[:3]
            if kind == "finetune" and task_name == task.name and method in cfg.methods:
                entry["finished"] += 1
                entry["hours"] += seconds / 3600
                entry["methods"][method]["times"].append(seconds / 3600)
    return given, dict(table)


def speed_ratio(path: Path) -> float:
    """float32 with random batches over bfloat16 with grouped batches: the ratio of their median wall times."""
    variants = json.loads(path.read_text())["variants"]
    return variants["fp32"]["wall_s"] / variants["bf16+grouped"]["wall_s"]


def _projected(e: dict) -> float | None:
    """The hours the phase will have taken: its finished jobs' plus the rest at their mean (None: none finished)."""
    return e["hours"] * e["planned"] / e["finished"] if e["finished"] else None


def _by_medians(e: dict) -> float | None:
    """The hours of the phase with each method's jobs at that method's median job here (None: a method has no finished
    job): what a machine doing nothing else would take, since a job run beside other work runs long and the median
    leaves such jobs out while they are fewer than half of a method's."""
    methods = e["methods"].values()
    if any(not m["times"] for m in methods if m["planned"]):
        return None
    return sum(m["planned"] * statistics.median(m["times"]) for m in methods if m["planned"])


def scenarios(config: Path, table: dict, budget: float) -> list[str]:
    """By medians, what a smaller search would cost: fewer selection seeds or fewer configurations per row and task (each
    selection job at the same median time, the test runs as they are); nothing while a phase has no such figure."""
    from domix.comparison.config import CompareConfig

    cfg = CompareConfig.from_yaml(config)
    if cfg.search is None:
        return []
    medians = {key: _by_medians(e) for key, e in table.items()}
    if None in medians.values():
        return ["smaller searches: by medians once every row has a finished job in every phase and task"]
    selection = sum(h for (phase, _), h in medians.items() if phase == "selection")
    rest = sum(h for (phase, _), h in medians.items() if phase != "selection")
    seeds, points = len(cfg.search.seeds), cfg.search.budget(cfg.methods)
    lines = [f"smaller searches, by medians ({seeds} selection seeds x {points} configurations now; the test runs as they are):"]
    for s in range(seeds, 0, -1):
        for k in range(points, 0, -1):
            hours = rest + selection * s * k / (seeds * points)
            lines.append(f"  {s} selection seed(s) x {k} configuration(s): {hours:.2f} h"
                         f" ({'within' if hours <= budget else 'over'} {budget:g} h)")
    return lines


def report(config: Path, budget: float, speed: Path | None) -> str:
    given, table = costs(config)
    lines = [f"{'phase':13} {'task':11} {'finished':>12} {'hours':>7} {'projected':>10} {'by medians':>11}", "-" * 69]
    order = list(PHASES.values())
    for (phase, task), e in sorted(table.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        projected, medians = _projected(e), _by_medians(e)
        lines.append(f"{phase:13} {task:11} {e['finished']:>5} of {e['planned']:<4} {e['hours']:7.2f} "
                     f"{'-' if projected is None else f'{projected:.2f}':>10} {'-' if medians is None else f'{medians:.2f}':>11}")
    total = sum(e["hours"] for e in table.values())
    done = all(e["finished"] == e["planned"] for e in table.values())
    projections, medians = [_projected(e) for e in table.values()], [_by_medians(e) for e in table.values()]
    lines += ["-" * 69, f"{'all':25} {'finished' if done else 'so far':>12} {total:7.2f} "
              + (f"{sum(projections):10.2f}" if None not in projections else f"{'-':>10}")
              + (f" {sum(medians):11.2f}" if None not in medians else f" {'-':>11}"),
              f"budget {budget:g} h: " + (f"{'within' if total <= budget else 'over'} it by {abs(budget - total):.2f} h" if done else
                                          "jobs remain" + (f"; projected {'within' if sum(projections) <= budget else 'over'} it"
                                                           if None not in projections else
                                                           "; a phase with no finished job has no projection yet"))]
    lines.append("by medians: each method's jobs at its median job time in that phase and task, what a machine doing "
                 "nothing else would take (jobs run beside other work run long)")
    lines += scenarios(config, table, budget)
    for method, (folder, hours) in given.items():
        lines.append(f"given store {method} ({folder}): trained before, in {hours:.2f} h by its manifests; not counted above")
    if speed is not None:
        ratio = speed_ratio(speed)
        tuning = sum(e["hours"] for (phase, _), e in table.items() if phase in ("selection", "test"))
        lines.append(f"before the speed work (float32, random batches; x{ratio:.2f}, {speed.name}): the fine-tuning's "
                     f"{tuning:.2f} h would be about {tuning * ratio:.2f} h")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the comparison's config (its out folder holds the records)")
    parser.add_argument("--budget", type=float, default=12.0, help="hours of wall time the protocol may take (default 12)")
    parser.add_argument("--speed", help="a benchmarks/finetune_speed.py result (JSON) for the before-and-after estimate")
    args = parser.parse_args(argv)
    from domix.errors import DomixError

    try:
        print(report(Path(args.config), args.budget, Path(args.speed) if args.speed else None))
    except DomixError as err:
        print(f"protocol_cost: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
