"""Fine-tune every end task of the data pack on a module store; print and save one table.

Each run is a `domix finetune` process of its own (its peak memory is its own), resumable
and never overwritten: rerunning the script skips finished runs.

    python benchmarks/finetune_tasks.py --modules runs/shared-data-smollm2 --methods domix lora \\
        --train-limit 320 --eval-limit 300 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TASKS = ("restaurant", "chemprot", "acl_arc", "scierc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", required=True)
    parser.add_argument("--data", default="../shared/data/tasks")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=["domix"], choices=["domix", "lora"])
    parser.add_argument("--out", default="runs/tasks")
    parser.add_argument("--json", default="benchmarks/results/finetune_tasks.json")
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--eval-limit", type=int)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    records = []
    for task in args.tasks:
        for method in args.methods:
            out = Path(args.out) / f"{task}-{method}"
            record_file = out / "result.json"
            if not record_file.is_file():
                cmd = [sys.executable, "-m", "domix", "finetune", "--modules", args.modules, "--task", f"{args.data}/{task}",
                       "--method", method, "--out", str(out), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                       "--lr", str(args.lr), "--max-length", str(args.max_length), "--seed", str(args.seed)]
                for flag, value in (("--train-limit", args.train_limit), ("--eval-limit", args.eval_limit)):
                    if value is not None:
                        cmd += [flag, str(value)]
                print("$", " ".join(cmd), flush=True)
                if subprocess.run(cmd).returncode != 0:
                    sys.exit(f"the {method} run on {task} failed")
            records.append(json.loads(record_file.read_text()))

    header = f"{'task':11} {'method':7} {'test acc':>9} {'macro-F1':>9} {'trainable %':>12} {'peak MB':>8} {'time s':>7}"
    print(header + "\n" + "-" * len(header))
    for r in records:
        print(f"{r['task']:11} {r['method']:7} {r['test']['accuracy']:>9.4f} {r['test']['macro_f1']:>9.4f} "
              f"{r['trainable_percent']:>12.2f} {r['peak_memory_mb']:>8.0f} {r['wall_time_s']:>7.0f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    keep = ("task", "method", "test", "dev", "best_epoch", "trainable_parameters", "trainable_percent",
            "peak_memory_mb", "wall_time_s", "train_time_s", "steps")
    Path(args.json).write_text(json.dumps({"settings": vars(args), "runs": [{k: r[k] for k in keep} for r in records]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
