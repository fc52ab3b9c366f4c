"""DoMIX's bridge recipe, decided on dev sets: which settings of P and B_cat should be the default?

P starts at c·I and B_cat holds the modules' B. With Adam each step moves B by about its learning rate,
whatever the gradient's size, so c scales the effect of every B step on the layer's output: the
published c = 1/Σr makes B learn Σr times more slowly than a plain LoRA-FA of the same shape
(lora_fa). "matched" learning rates (B at lr / c, P at lr · c) remove that, leaving c to set how
strongly the modules' own updates act at the start. The candidates below set every bridge setting explicitly (so a later change of domix's
defaults does not change what a candidate means); each runs with the same budget on every task, next
to LoRA and LoRA-FA of the modules' total rank. Dev scores only (the best epoch's); test sets stay out.

    python benchmarks/bridge_recipe.py --modules benchmarks/results/compare-dap/pretrain/domix \\
        --tasks restaurant chemprot acl_arc --out benchmarks/results/bridge-recipe/runs \\
        --json benchmarks/results/bridge-recipe/bridge_recipe.json

Each run is an ordinary domix run folder under --out (no model weights): a finished one is read
back, an interrupted one resumes, so rerunning the command goes on where it stopped. With --reuse, a
run the comparison (configs/compare-dap.yaml) has already made with exactly the same settings (lora,
lora_fa, and the first domain order of domix for p10x, of domix_paper for paper) is read from there
instead of being trained twice; the table says which runs came from where. The sweep decided: p10x is
domix's default since 2026-12-03 (docs/bridge-init.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

PAPER = {"p_init": "scaled_identity", "p_lr": None, "p_weight_decay": 0.01, "b_lr": None}
# name -> (finetune settings, epochs as a multiple of --epochs)
CANDIDATES: dict[str, tuple[dict, int]] = {
    "paper": (PAPER, 1),  # the published classification code: P = I/Σr, P and B at the run's lr
    # P and B "matched" (domix.methods.bridge.config.BridgeConfig): steps move the output as at P = I, so B learns as
    # lora_fa's does; c then only sets how strongly the modules' own updates act at the start
    "average-matched": ({**PAPER, "p_init": "average", "p_lr": "matched", "b_lr": "matched"}, 1),  # their mean
    "identity": ({**PAPER, "p_init": "identity"}, 1),  # their sum (matched is the run's lr at c = 1)
    "scaled-matched": ({**PAPER, "p_lr": "matched", "b_lr": "matched"}, 1),  # 1/Σr of each: hardly at all
    "p10x": ({**PAPER, "p_lr": "10x", "p_weight_decay": 0.0}, 1),  # the published LLM code's P
    "paper-long": (PAPER, 2),  # twice the epochs: time for P to move
}
REFERENCES = ("lora", "lora_fa")  # of the modules' total rank, from the base
COMPARE_ROWS = {"lora": "lora", "lora_fa": "lora_fa", "paper": "domix_paper", "p10x": "domix"}  # a sweep variant -> the comparison's row


def same_run(cfg, compare_out: Path, label: str, task: str, seed: int, store_order: list[str]) -> Path | None:
    """The comparison's finished run of this variant, task and seed if it ran with exactly ``cfg``'s settings."""
    from domix.engine.runfolder import RUN_FILE
    from domix.engine.runfolder import RESULT_FILE

    if label not in COMPARE_ROWS:
        return None
    folder = compare_out / "finetune" / COMPARE_ROWS[label] / task / (f"seed{seed}" + ("-" + "-".join(store_order) if label in ("paper", "p10x") else ""))
    if not (folder / RESULT_FILE).is_file():
        return None
    from domix.engine.runfolder import changed_settings  # the rule by which a run resumes and the comparison reuses one

    return None if changed_settings(json.loads((folder / RUN_FILE).read_text())["config"], cfg) else folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", required=True, help="a finished module store (domix pretrain --out)")
    parser.add_argument("--tasks", nargs="+", default=["restaurant", "chemprot", "acl_arc"])
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--references", nargs="*", default=list(REFERENCES), choices=list(REFERENCES))
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default="runs/bridge-recipe")
    parser.add_argument("--json", help="write the table's numbers here")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--train-limit", type=int, default=480)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--select-metric", default="macro_f1")
    parser.add_argument("--reuse", help="a comparison's out folder whose runs with the same settings are read instead of run")
    parser.add_argument("--read-only", action="store_true", help="train nothing: tabulate the finished runs, '-' for the others")
    args = parser.parse_args()

    from compare_reading import run_shares  # the same share the comparison's reading gives
    from domix import atomic
    from domix.console import quiet_third_party
    from domix.finetuning.config import FinetuneConfig
    from domix.engine.runfolder import RESULT_FILE
    from domix.finetuning.run import finetune
    from domix.store import base_of, load_store
    from domix.system import configure_threads

    configure_threads()
    quiet_third_party()

    out, data = Path(args.out), Path(args.data)
    store = load_store(args.modules)
    rank, store_order = sum(m.rank for m in store), [m.name for m in store]
    # the references first: they say where the budget stands
    plan = [(name, {"method": name, "model": base_of(store), "lora_rank": rank}, 1) for name in args.references]
    plan += [(name, {"method": "domix", "modules": args.modules, **CANDIDATES[name][0]}, CANDIDATES[name][1]) for name in args.candidates]
    results = []
    for label, settings, epoch_factor in plan:  # a candidate on every task before the next: a stopped sweep leaves whole rows
        for task in args.tasks:
            for seed in args.seeds:
                folder = out / task / label / f"seed{seed}"
                cfg = FinetuneConfig(task=str(data / "tasks" / task), out=str(folder), seed=seed, epochs=args.epochs * epoch_factor,
                                     lr=args.lr, batch_size=args.batch_size, max_length=args.max_length, train_limit=args.train_limit,
                                     eval_limit=args.eval_limit, select_metric=args.select_metric, save_model=False,
                                     checkpoint_every=20, **settings)
                started = time.perf_counter()
                reused = same_run(cfg, Path(args.reuse), label, task, seed, store_order) if args.reuse else None
                result_file = (reused or folder) / RESULT_FILE
                if result_file.is_file():
                    record = json.loads(result_file.read_text())
                elif args.read_only:
                    continue
                else:
                    with contextlib.redirect_stdout(io.StringIO()):
                        record = finetune(cfg)
                metric = args.select_metric
                results.append({"task": task, "variant": label, "seed": seed, "settings": {k: v for k, v in settings.items() if k != "modules"},
                                "epochs": cfg.epochs, "dev": record["dev"], "dev_history": [h[metric] for h in record["dev_history"]],
                                "majority_dev": record["majority"]["dev"], "bridge_shares": run_shares(record["bridge_usage"]) if record.get("bridge_usage") else None,
                                "train_time_s": record.get("train_time_s"), "wall_s": round(time.perf_counter() - started, 1),
                                "run": str(reused or folder)})
                print(f"{task:12s} {label:16s} seed {seed}: dev {metric} {record['dev'][metric]:.4f}, "
                      f"accuracy {record['dev']['accuracy']:.4f} (per epoch {[round(v, 4) for v in results[-1]['dev_history']]})"
                      + (f" [the comparison's run {reused}]" if reused else ""), flush=True)
                if args.json:  # after every run, so a stopped sweep still leaves its table
                    atomic.write_json(Path(args.json), {"settings": vars(args), "total_rank": rank, "results": results})
    print_table(results, args.tasks, args.select_metric)


def print_table(results: list[dict], tasks: list[str], metric: str) -> None:
    labels = list(dict.fromkeys(r["variant"] for r in results))
    done = [t for t in tasks if any(r["task"] == t for r in results)]
    rows = [["variant", *(f"{t} dev" for t in done), "mean"]]
    majority = {t: next(r["majority_dev"][metric] for r in results if r["task"] == t) for t in done}
    rows.append(["majority class", *(f"{100 * majority[t]:.1f}" for t in done), f"{100 * statistics.fmean(majority.values()):.1f}"])
    for label in labels:
        per_task = [[r["dev"][metric] for r in results if r["variant"] == label and r["task"] == t] for t in done]
        cells = [f"{100 * statistics.fmean(v):.1f}" if v else "-" for v in per_task]
        mean = f"{100 * statistics.fmean(statistics.fmean(v) for v in per_task):.1f}" if all(per_task) else "-"
        rows.append([label, *cells, mean])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"dev {metric} (points), best epoch")
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
