"""The bridge's initial scale, compared on dev sets: which P init should DoMIX default to?

P starts at c·I. With Adam, each step moves B_cat by about the learning rate whatever c is, so its
effect on the layer's output is scaled by c: the published c = 1/Σr slows every B update by Σr
(24 for three rank-8 modules) against c = 1/N (the modules' mean update at full strength) or c = 1.
This script trains one module store (or takes --modules) and fine-tunes DoMIX with each init (and a
bridge learning rate of its own where asked) on the given tasks, plus plain LoRA of the same total
rank for reference. It reads dev scores only (the best epoch's): test sets stay out of the choice.

    python benchmarks/bridge_init.py --model .cache/smollm2-135m --tasks restaurant acl_arc \\
        --out runs/bridge-init --json benchmarks/results/bridge_init.json

Each fine-tuning run is an ordinary domix run folder under --out, so an interrupted run resumes.
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
DOMAINS = {"restaurant": "restaurant", "biomed": "biomed", "cs": "cs"}


def variants(args) -> list[tuple[str, dict]]:
    """(label, finetune settings) for every DoMIX variant, then LoRA."""
    out = [(f"domix p_init={init}", {"method": "domix", "p_init": init}) for init in args.inits]
    out += [(f"domix p_init={init} p_lr={lr:g}", {"method": "domix", "p_init": init, "p_lr": lr})
            for init in args.inits_with_p_lr for lr in args.p_lrs]
    out.append(("lora (same total rank)", {"method": "lora"}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--modules", help="an existing module store (default: pre-train one into OUT/store)")
    parser.add_argument("--tasks", nargs="+", default=["restaurant", "acl_arc"])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default="runs/bridge-init")
    parser.add_argument("--json", help="write the table's numbers here")
    parser.add_argument("--inits", nargs="+", default=["scaled_identity", "average", "identity"])
    parser.add_argument("--inits-with-p-lr", nargs="*", default=["scaled_identity"])
    parser.add_argument("--p-lrs", nargs="*", type=float, default=[1e-2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--pretrain-steps", type=int, default=24)
    parser.add_argument("--train-limit", type=int, default=200)
    parser.add_argument("--eval-limit", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    args = parser.parse_args()

    from domix.finetune.config import FinetuneConfig
    from domix.finetune.run import finetune
    from domix.pretrain.config import PretrainConfig
    from domix.pretrain.run import pretrain

    out, data = Path(args.out), Path(args.data)
    store = Path(args.modules) if args.modules else out / "store"
    if not args.modules:
        pretrain(PretrainConfig(model=args.model, domains={d: str(data / "corpora" / f"{d}.txt") for d in DOMAINS}, out=str(store),
                                steps=args.pretrain_steps, batch_size=8, seq_len=64, heldout_max_blocks=16, checkpoint_every=1000))
    rank = sum(json.loads((p / "adapter_config.json").read_text())["r"] for p in store.iterdir() if (p / "adapter_config.json").is_file())
    results = []
    for task in args.tasks:
        for label, settings in variants(args):
            for seed in args.seeds:
                folder = out / task / label.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "-") / f"seed{seed}"
                common = dict(task=str(data / "tasks" / task), out=str(folder), seed=seed, epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, max_length=args.max_length, train_limit=args.train_limit,
                              eval_limit=args.eval_limit, save_model=False, checkpoint_every=1000)
                if settings["method"] == "lora":
                    cfg = FinetuneConfig(model=args.model, lora_rank=rank, **settings, **common)
                else:
                    cfg = FinetuneConfig(modules=str(store), **settings, **common)
                started = time.perf_counter()
                result_file = folder / "result.json"
                if result_file.is_file():
                    record = json.loads(result_file.read_text())
                else:
                    with contextlib.redirect_stdout(io.StringIO()):
                        record = finetune(cfg)
                results.append({"task": task, "variant": label, "seed": seed, "dev": record["dev"],
                                "dev_history": [h["macro_f1"] for h in record["dev_history"]],
                                "majority_dev": record["majority"]["dev"], "wall_s": round(time.perf_counter() - started, 1)})
                print(f"{task:12s} {label:40s} seed {seed}: dev macro-F1 {record['dev']['macro_f1']:.4f}, "
                      f"accuracy {record['dev']['accuracy']:.4f} (per epoch {results[-1]['dev_history']})", flush=True)
    print_table(results, args.tasks)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results}, indent=1) + "\n")


def print_table(results: list[dict], tasks: list[str]) -> None:
    labels = list(dict.fromkeys(r["variant"] for r in results))
    rows = [["variant", *(f"{t} dev F1" for t in tasks), "mean"]]
    majority = {t: next(r["majority_dev"]["macro_f1"] for r in results if r["task"] == t) for t in tasks}
    rows.append(["majority class", *(f"{100 * majority[t]:.1f}" for t in tasks), f"{100 * statistics.fmean(majority.values()):.1f}"])
    for label in labels:
        per_task = [statistics.fmean(r["dev"]["macro_f1"] for r in results if r["variant"] == label and r["task"] == t) for t in tasks]
        rows.append([label, *(f"{100 * v:.1f}" for v in per_task), f"{100 * statistics.fmean(per_task):.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
