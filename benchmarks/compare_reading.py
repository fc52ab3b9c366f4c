"""What a `domix compare` folder says beyond its score table: what domain-adaptive pre-training buys, how much of
each bridged layer's update reads each domain's subspace, and how fast each method learned.

    python benchmarks/compare_reading.py benchmarks/results/compare-dap --config configs/compare-dap.yaml

Reads the finished runs' records (OUT/finetune/<row>/<task>/<seed>/result.json; the row is the comparison's
method name, so domix and domix_paper stay apart), finished or not, so it also reads a comparison in progress.

- Differences (test, points, mean over each row's runs; "n" the runs on each side), where both rows ran, each with
  its paired statistics as ``domix compare`` reports them (domix.comparison.stats: pairs at the same seed, 95% bootstrap
  interval over seeds and test examples, pairs above, "within noise" where the interval covers 0):
  lora_module - lora_module_rank (what DAP buys: the task's own module as LoRA's start, same rank),
  domix - lora_fa (what the modules add to DoMIX's trainable shape), domix - lora_module (what composing
  buys over the task's own module), domix - domix_paper (the bridge recipe), domix - lora; and the macro-F1
  difference's mean over tasks seed by seed, for the seeds both rows ran on every task.
- Bridge usage of a layer and domain j: ||B_cat diag(s) P[:, j] A_j||_F (recorded by every bridged run); the
  share of domain j is its usage over the sum over domains, averaged over layers, then over runs; the task's
  own domain is starred, and an even share is 1/N. The share a domain starts with is not 1/N: at P = c·I it is
  its module's own ||s_j B_j A_j||_F, read here from the store's files (safetensors, PEFT's names), so the
  table also gives each share's change over training: what the bridge learned to favour. The own domain's lift:
  its share on its task minus its mean share on the row's other tasks (> 0: the task draws on its domain more).
- The same on the task's own inputs (runs that recorded it): domain j's part of the update on a test example's
  tokens, ||B_cat diag(s) P[:, j] A_j x||, RMS over tokens; at the start and as trained. A module's A was
  trained on its corpus's activations, so a task's inputs can excite its own domain's subspace more than
  the weights' norms show.
- Learning: training loss first -> last step, dev macro-F1 per epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PAIRS = [("lora_module", "lora_module_rank", "what DAP buys (same rank, the own module as start)"),
         ("domix", "lora_fa", "what the modules add to DoMIX's trainable shape"),
         ("domix", "lora_module", "composing all modules over the task's own module"),
         ("domix", "domix_paper", "the bridge recipe: default over the published"),
         ("domix", "lora", "DoMIX against LoRA of the same total rank")]
METRICS = ("macro_f1", "accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the out folder of domix compare")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--config", help="the comparison's YAML, for each task's own domain while the comparison has neither "
                                         "results.json nor a lora_module job yet")
    args = parser.parse_args()
    folder = Path(args.folder)
    records = []
    for path in sorted(folder.glob("finetune/*/*/*/result.json")):
        row, task, seed = path.parts[-4:-1]
        records.append(json.loads(path.read_text()) | {"row": row, "task": task, "run": seed})
    if not records and (folder / "results.json").is_file():  # a committed comparison without its run folders
        records = [r | {"row": r["method"]} for r in json.loads((folder / "results.json").read_text())["runs"]]
    if not records:
        raise SystemExit(f"{folder} holds no finished fine-tuning run")
    domains = _task_domains(folder, args.config)
    shares = bridge_shares(records, domains, _starting_shares(folder))
    input_shares = bridge_shares(records, domains, lambda usage: run_shares(on_inputs(usage, "start")), on_inputs)
    figures = {"differences": differences(records), "bridge_shares": shares,
               "own_domain_lift": [{"row": row, "task": task, "lift": lift} for (row, task), lift in own_domain_lift(shares).items()],
               "input_shares": input_shares,
               "input_own_domain_lift": [{"row": row, "task": task, "lift": lift} for (row, task), lift in own_domain_lift(input_shares).items()]}
    print_differences(figures["differences"])
    print_shares(figures["bridge_shares"], domains)
    print_shares(input_shares, domains, "on the task's test inputs (each domain's part of the update, RMS over tokens)",
                 "at the start (the modules' B, P's init) on the same inputs")
    print_learning(records)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


def _task_domains(folder: Path, config: str | None = None) -> dict[str, str]:
    """Each task's own domain, from the comparison's saved config (results.json), its YAML, or its job configs."""
    results = folder / "results.json"
    if results.is_file():
        return {t["name"]: t["domain"] for t in json.loads(results.read_text())["settings"]["tasks"]}
    if config:  # read as domix compare reads it (its checks, its task specs)
        from domix.comparison.config import CompareConfig

        return {t.name: t.domain for t in CompareConfig.from_yaml(config).tasks}
    from domix.finetuning.config import FinetuneConfig
    from domix.settings import build_config

    found = {}
    for config in folder.glob("configs/finetune/lora_module/*/*.yaml"):  # a job's settings, read as domix finetune reads them
        found[config.parent.name] = build_config(FinetuneConfig, str(config), {}).init_module
    return found


def _by(records: list[dict], key) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


def differences(records: list[dict]) -> list[dict]:
    from domix.comparison.stats import paired

    groups = _by(records, lambda r: (r["row"], r["task"]))
    tasks = sorted({r["task"] for r in records})
    # the records as domix compare's paired statistics read runs: pairs at the same seed, intervals over seeds and test examples
    as_runs = [{"method": r["row"], "task": r["task"], "seed": r["run"].split("-")[0], "test": r["test"],
                "test_predictions": r.get("test_predictions")} for r in records]
    rows = []
    for a, b, meaning in PAIRS:
        per_task = {}
        for task in tasks:
            if (a, task) in groups and (b, task) in groups:
                per_task[task] = {m: 100 * (statistics.fmean(r["test"][m] for r in groups[(a, task)])
                                            - statistics.fmean(r["test"][m] for r in groups[(b, task)])) for m in METRICS}
                per_task[task]["n"] = [len(groups[(a, task)]), len(groups[(b, task)])]
        if per_task:
            mean = {m: statistics.fmean(v[m] for v in per_task.values()) for m in METRICS} if len(per_task) == len(tasks) else None
            rows.append({"a": a, "b": b, "meaning": meaning, "tasks": per_task, "mean": mean, "by_seed": _by_seed(groups, a, b, tasks),
                         "paired": {m: paired(as_runs, a, b, tasks, m) for m in METRICS}})
    return rows


def _by_seed(groups: dict, a: str, b: str, tasks: list[str]) -> dict[str, float]:
    """Seed -> the macro-F1 difference a - b averaged over the tasks, for each seed both rows ran on every task
    (a row with several runs of one seed, e.g. domain orders, gives their mean): whether a difference holds seed by seed."""
    def seed(r: dict) -> str:
        return r["run"].split("-")[0]

    out = {}
    for s in sorted({seed(r) for t in tasks for r in groups.get((a, t), [])}):
        diffs = []
        for t in tasks:
            mine = [r["test"]["macro_f1"] for r in groups.get((a, t), []) if seed(r) == s]
            theirs = [r["test"]["macro_f1"] for r in groups.get((b, t), []) if seed(r) == s]
            if not (mine and theirs):
                break
            diffs.append(100 * (statistics.fmean(mine) - statistics.fmean(theirs)))
        else:
            out[s] = statistics.fmean(diffs)
    return out


def run_shares(usage: dict) -> dict[str, float]:
    """One run's share of each domain in its bridged update (a record's ``bridge_usage``), mean over layers."""
    from domix.comparison.summary import layer_mean_shares

    return layer_mean_shares(usage["domains"], usage["norms"])


def on_inputs(usage: dict, when: str = "end") -> dict | None:
    """A record's input-weighted usage (on its test inputs, ``when`` "start" or "end" of training) in
    :func:`run_shares`'s form; None for a run recorded before domix recorded it."""
    inputs = usage.get("inputs")
    return {"domains": usage["domains"], "norms": inputs["norms"][when]} if inputs else None


def bridge_shares(records: list[dict], own: dict[str, str], start=None, view=lambda usage: usage) -> list[dict]:
    """Each (row, task)'s mean domain shares; ``start(usage)``, if given, the shares the same layers started with.
    ``view(usage)`` picks the norms to share out (the weights' by default, :func:`on_inputs` for the inputs'); runs
    where it gives None are left out."""
    out = []
    with_usage = [r for r in records if r.get("bridge_usage") and view(r["bridge_usage"])]
    for (row, task), runs in sorted(_by(with_usage, lambda r: (r["row"], r["task"])).items()):
        shares: dict[str, list[float]] = {}
        for r in runs:
            for d, share in run_shares(view(r["bridge_usage"])).items():
                shares.setdefault(d, []).append(share)
        mean = {d: statistics.fmean(v) for d, v in shares.items()}
        began = start(runs[0]["bridge_usage"]) if start else None
        out.append({"row": row, "task": task, "runs": len(runs), "shares": mean, "own": own.get(task),
                    "own_share": mean.get(own.get(task)), "even": 1 / len(mean), "start": began,
                    "change": {d: mean[d] - began[d] for d in mean} if began else None})
    return out


def own_domain_lift(rows: list[dict]) -> dict[tuple[str, str], float]:
    """(row, task) -> the task's own domain's share there minus that domain's mean share on the row's other tasks:
    what the task itself adds to its domain's share, the modules' sizes and the bridge's drift held fixed."""
    by_row = {}
    for r in rows:
        by_row.setdefault(r["row"], []).append(r)
    lifts = {}
    for row, tasks in by_row.items():
        for r in tasks:
            others = [o["shares"][r["own"]] for o in tasks if o is not r and r["own"] in o["shares"]]
            if r["own"] in r["shares"] and others:
                lifts[(row, r["task"])] = r["shares"][r["own"]] - statistics.fmean(others)
    return lifts


def _starting_shares(folder: Path):
    """A function from a run's ``bridge_usage`` to each domain's share at P = c·I (c cancels in a share): per layer
    ||s_j B_j A_j||_F of each module, from the store the comparison pre-trained (None if it is not there)."""
    store = folder / "pretrain" / "domix"
    if not store.is_dir():
        return None
    import torch
    from safetensors.torch import load_file

    modules = {}
    for adapter in sorted(store.glob("*/adapter_model.safetensors")):
        config = json.loads((adapter.parent / "adapter_config.json").read_text())
        modules[adapter.parent.name] = (load_file(str(adapter)), config["lora_alpha"] / config["r"])

    def norm(domain: str, layer: str) -> float:
        weights, scale = modules[domain]
        a = next(v for k, v in weights.items() if k.endswith(f"{layer}.lora_A.weight")).double()
        b = next(v for k, v in weights.items() if k.endswith(f"{layer}.lora_B.weight")).double()
        return scale * float(torch.trace((b.T @ b) @ (a @ a.T)).clamp(min=0).sqrt())  # ||B A||_F without forming B A

    cache: dict = {}

    def start(usage: dict) -> dict[str, float]:
        key = (tuple(usage["domains"]), tuple(usage["layers"]))
        if key not in cache:
            cache[key] = run_shares({"domains": usage["domains"],
                                     "norms": [[norm(d, layer) for d in usage["domains"]] for layer in usage["layers"]]})
        return cache[key]

    return start


def print_differences(rows: list[dict]) -> None:
    print("Differences on test, points (macro-F1 / accuracy), mean over runs; n = runs per side")
    for row in rows:
        cells = "  ".join(f"{t} {v['macro_f1']:+.1f} / {v['accuracy']:+.1f} (n {v['n'][0]},{v['n'][1]})" for t, v in row["tasks"].items())
        mean = f"  mean {row['mean']['macro_f1']:+.1f} / {row['mean']['accuracy']:+.1f}" if row["mean"] else ""
        seeds = ", ".join(f"{s} {v:+.1f}" for s, v in row["by_seed"].items())
        print(f"  {row['a']} - {row['b']:18} {cells}{mean}" + (f"  [macro-F1 mean by seed: {seeds}]" if seeds else "")
              + f"    ({row['meaning']})")
        pooled = (row.get("paired") or {}).get("macro_f1")
        if pooled:
            from domix.comparison.report import format_difference, verdict

            print(f"    paired macro-F1, pooled over tasks: {format_difference(pooled['pooled'])} ({verdict(pooled['pooled'])}; "
                  f"95% interval, resampling {pooled['pooled']['resampled']}; pairs above the reference / pairs)")


def print_shares(rows: list[dict], own: dict[str, str], measure: str = "of the weights (every input direction alike)",
                 started: str = "at the start (P = c·I, the modules' own update sizes)") -> None:
    if not rows:
        return
    domains = list(rows[0]["shares"])
    print(f"\nBridge usage {measure}: each domain's share of the update, mean over layers and runs (* the task's own domain)")
    print(f"  {'row':14} {'task':11} " + " ".join(f"{d:>11}" for d in domains) + "  runs")
    for r in rows:
        cells = " ".join(f"{r['shares'][d]:10.3f}" + ("*" if d == r["own"] else " ") for d in domains)
        print(f"  {r['row']:14} {r['task']:11} {cells}  {r['runs']}")
    lifts = own_domain_lift(rows)
    if lifts:
        print("\n  the own domain's share on its task against the same domain's mean share on the row's other tasks (its lift)")
        for (row, task), lift in lifts.items():
            print(f"  {row:14} {task:11} {lift:+.3f}")
    moved = [r for r in rows if r["change"]]
    if moved:
        print(f"\n  the same shares {started}, and their change over training")
        for r in moved:
            cells = " ".join(f"{r['start'][d]:.3f}{r['change'][d]:+.3f}" + ("*" if d == r["own"] else " ") for d in domains)
            print(f"  {r['row']:14} {r['task']:11} {cells}")


def print_learning(records: list[dict]) -> None:
    print("\nLearning: training loss (first -> last step) and dev macro-F1 per epoch, mean over runs")
    print(f"  {'row':18} {'task':11} {'loss first':>10} {'loss last':>10}  dev macro-F1 by epoch")
    for (row, task), runs in sorted(_by(records, lambda r: (r["row"], r["task"])).items()):
        first = statistics.fmean(r["loss_curve"][0][1] for r in runs)
        last = statistics.fmean(r["loss_curve"][-1][1] for r in runs)
        epochs = min(len(r.get("dev_history", [])) for r in runs)  # results.json does not keep it
        dev = [statistics.fmean(r["dev_history"][e]["macro_f1"] for r in runs) for e in range(epochs)]
        print(f"  {row:18} {task:11} {first:10.3f} {last:10.3f}  " + " ".join(f"{100 * v:5.1f}" for v in dev))


if __name__ == "__main__":
    main()
