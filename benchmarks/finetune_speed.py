"""Where a fine-tuning job's time goes, and what mixed precision and length-grouped batches save, side by side.

Runs ``domix finetune`` (or with ``--command instruct``, ``domix instruct --task``: a labelled task as instructions) once
per variant and seed (each its own process, one after another, so the timings
share the machine's state), with everything but the variant's settings alike, and prints per run the phases
of the wall time (setup, training steps, dev scoring, test), the median step, peak memory and the kept
epoch's dev scores; then per variant the medians and the mean dev macro-F1 with its paired difference from the
first variant (the same seeds). The test split is not read (``--no-score-test``): this is a decision.

    python benchmarks/finetune_speed.py --task ../shared/data/tasks/restaurant --method lora --model .cache/smollm2-135m \\
        --seeds 1 2 --set lora_rank=24 train_limit=320 eval_limit=300 epochs=4 lr=1e-3 --json benchmarks/results/finetune_speed.json
    python benchmarks/finetune_speed.py --command instruct --task ../shared/data/tasks/acl_arc --method dora \\
        --model .cache/smollm2-135m --seeds 11 --set lora_rank=40 train_limit=320 epochs=3 lr=2e-4 batch_size=16 \\
        --json benchmarks/results/finetune_speed/instruct-acl_arc-dora.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

VARIANTS = {
    "fp32": {},
    "bf16": {"autocast": "bfloat16"},
    "bf16+grouped": {"autocast": "bfloat16", "group_by_length": True},
}


def parse_set(items: list[str]) -> dict:
    """KEY=VALUE settings, each value read as YAML (numbers, booleans)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, not {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def run(settings: dict, folder: Path, threads: int | None, command: str = "finetune") -> dict:
    """One ``domix finetune`` (or ``command``) run in its own process; its result.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({**settings, "out": str(folder / "run")}, sort_keys=False))
    env = None
    if threads:
        import os

        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DOMIX_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "domix", command, "--config", str(config), "--overwrite"],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"domix {command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads((folder / "run" / "result.json").read_text())


def summary(record: dict) -> dict:
    curve = record["loss_curve"]
    return {"wall_s": record["wall_time_s"], **{f"{k}_s": v for k, v in record["time_s"].items()},
            "step_s": record["train_time_s"] / max(record["steps"], 1), "peak_mb": record["peak_memory_mb"],
            "dev_macro_f1": record["dev"]["macro_f1"], "dev_accuracy": record["dev"]["accuracy"],
            "best_epoch": record["best_epoch"], "final_loss": curve[-1][1] if curve else None}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", help="run nothing: print the tables of a results JSON this script wrote")
    parser.add_argument("--command", choices=["finetune", "instruct"], default="finetune",
                        help="the run: a classifier (finetune) or a causal LM on the task as instructions (instruct)")
    parser.add_argument("--task")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--model")
    parser.add_argument("--modules")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], help="other settings of the command as KEY=VALUE")
    parser.add_argument("--threads", type=int, help="threads of each run (default: torch's)")
    parser.add_argument("--json", help="write the runs and the summary here")
    args = parser.parse_args(argv)
    if args.tables:
        out = json.loads(Path(args.tables).read_text())
        print(f"$ {out['command']}")
        print_tables(out)
        return out
    if not args.task:
        parser.error("--task is required (or --tables FILE)")
    base = {"task": args.task, "method": args.method, "save_model": False, "score_test": False, **parse_set(args.set)}
    base.update({k: v for k, v in (("model", args.model), ("modules", args.modules)) if v})
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # seeds outside, variants inside: a drift of the machine's speed hits every variant alike
            for variant in args.variants:
                record = run({**base, **VARIANTS[variant], "seed": seed}, Path(tmp) / f"{variant}-{seed}", args.threads, args.command)
                runs.append({"variant": variant, "seed": seed, **summary(record)})
                print(f"{variant} seed {seed}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                             for k, v in runs[-1].items() if k not in ("variant", "seed")), flush=True)
    out = {"command": " ".join(["python", "benchmarks/finetune_speed.py", *(argv if argv is not None else sys.argv[1:])]),
           "settings": base, "runs": runs, "variants": summarise(runs, args.variants)}
    print_tables(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


def print_tables(out: dict) -> None:
    """The runs' table and the variants' summary of a benchmark's results (as run, or as read back with --tables)."""
    runs, per_variant = out["runs"], out["variants"]
    first = next(iter(per_variant))
    header = ["variant", "seed", "wall s", "setup s", "train s", "dev s", "test s", "step s", "peak MB", "epoch", "dev acc", "dev macro-F1"]
    rows = [header] + [[r["variant"], str(r["seed"]), f"{r['wall_s']:.0f}", f"{r['setup_s']:.0f}", f"{r['train_s']:.0f}",
                        f"{r['dev_s']:.0f}", f"{r['test_s']:.0f}", f"{r['step_s']:.2f}", f"{r['peak_mb']:.0f}", str(r["best_epoch"]),
                        f"{100 * r['dev_accuracy']:.1f}", f"{100 * r['dev_macro_f1']:.1f}"] for r in runs]
    print(table(rows))
    rows = [["variant", "median wall s", f"x {first}", "median step s", "median dev s", "peak MB", "mean dev macro-F1",
             f"- {first}, per seed"]]
    rows += [[v, f"{s['wall_s']:.0f}", f"{s['speedup']:.2f}", f"{s['step_s']:.2f}", f"{s['dev_s']:.0f}", f"{s['peak_mb']:.0f}",
              f"{s['dev_macro_f1']:.1f}", " ".join(f"{d:+.1f}" for d in s["dev_macro_f1_diffs"])] for v, s in per_variant.items()]
    print(table(rows))


def summarise(runs: list[dict], variants: list[str]) -> dict:
    """Per variant: medians of wall, step and dev-scoring time, peak memory, the speed-up over the first variant
    (per seed, then the median) and the mean dev macro-F1 with its per-seed difference from the first variant."""
    first = variants[0]
    reference = {r["seed"]: r for r in runs if r["variant"] == first}
    per_variant = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        diffs = [100 * (r["dev_macro_f1"] - reference[r["seed"]]["dev_macro_f1"]) for r in mine]
        per_variant[variant] = {
            "wall_s": statistics.median(r["wall_s"] for r in mine), "step_s": statistics.median(r["step_s"] for r in mine),
            "dev_s": statistics.median(r["dev_s"] for r in mine), "peak_mb": max(r["peak_mb"] for r in mine),
            "speedup": statistics.median(reference[r["seed"]]["wall_s"] / r["wall_s"] for r in mine),
            "dev_macro_f1": statistics.fmean(100 * r["dev_macro_f1"] for r in mine),
            "dev_macro_f1_diff": statistics.fmean(diffs), "dev_macro_f1_diffs": diffs,
        }
    return per_variant


if __name__ == "__main__":
    main()
