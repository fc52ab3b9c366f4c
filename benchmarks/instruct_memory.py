"""Instruction fine-tuning of a causal LM: DoMIX (two LoRA adapters bridged) vs PEFT LoRA and DoRA.

The same model, data, batch and sequence length for all; LoRA and DoRA get the adapters' total rank
on the same layers (q, k, v, up, down projections). Each method runs in its own process, so its peak
memory (peak RSS on CPU, peak allocated on CUDA) is its own. Each run takes its batches twice: step
time is the median of the second pass, the steady state; the first pass, where every sequence length
is new to the device, is reported beside it. Methods are interleaved over repeats, medians reported.

The data is real text: the restaurant aspect-sentiment task of ../shared/data as instructions
("Sentence: ... Aspect: ... Sentiment:" -> the label). The two adapters are trained here by
``domix pretrain`` (restaurant and biomed corpora, rank 16, a few steps: their values do not matter
for memory or time, their shapes do).

    python benchmarks/instruct_memory.py --model .cache/smollm2-135m --batch-size 8 --max-length 128

``--row NAME=YAML`` (repeated) times the runs of settings files instead, each as its ``domix instruct`` run
builds it (method, adapters or store, rank, batch, length, data): the commonsense comparison's rows side by
side in one session, for example (``runs/commonsense/configs/rows/*.yaml``), when its rows trained in
different sessions of a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGETS = "q_proj,k_proj,v_proj,up_proj,down_proj"
TASK = Path("../shared/data/tasks/restaurant/train.jsonl")
CORPORA = {"restaurant": "../shared/data/corpora/restaurant.txt", "biomed": "../shared/data/corpora/biomed.txt"}


def write_instructions(task: Path, path: Path, limit: int) -> None:
    rows = []
    for line in task.read_text().splitlines()[:limit]:
        r = json.loads(line)
        rows.append({"prompt": f"Sentence: {r['text_pair']}\nAspect: {r['text']}\nSentiment of the aspect:", "response": r["label"]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def make_adapters(args, store: Path) -> None:
    cmd = [sys.executable, "-m", "domix", "pretrain", "--model", args.model, "--out", str(store), "--lora-rank", str(args.rank),
           "--alpha", str(2 * args.rank), "--target-modules", TARGETS, "--steps", "2", "--batch-size", "2", "--seq-len", "64",
           "--heldout-max-blocks", "1"]
    cmd += ["--dtype", args.dtype if args.dtype != "auto" else "float32", "--device", args.device]
    for name, path in args.domains.items():
        cmd += ["--domain", f"{name}={path}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def child(args) -> dict:
    """One method: build through domix instruct's own code path, then time training steps."""
    from domix.llm.config import InstructConfig
    from domix.llm.train import prepare

    if args.row_file:  # a row's own settings, read as `domix instruct --config` reads them (recipe, types, checks)
        import dataclasses

        from domix.settings import build_config

        cfg = dataclasses.replace(build_config(InstructConfig, args.row_file, {}), out="unused", general=None)
        args.batch_size = cfg.batch_size
        return _time_steps(args, prepare(cfg))
    cfg = InstructConfig(train=args.train, model=args.model, method=args.method, out="unused", batch_size=args.batch_size,
                         max_length=args.max_length, gradient_checkpointing=args.gradient_checkpointing, dtype=args.dtype,
                         device=args.device, modules=args.store if args.method == "domix" else None,
                         lora_rank=None if args.method == "domix" else 2 * args.rank,
                         target_modules=None if args.method == "domix" else TARGETS.split(","))
    return _time_steps(args, prepare(cfg))


def _time_steps(args, run: dict) -> dict:
    """Median time of ``args.steps`` training steps (the second of two passes over the same batches) and the peak memory."""
    from domix.llm.data import collate
    from domix.lm_loss import lm_losses
    from domix.system import peak_memory_mb

    model, device, groups = run["model"], run["device"], run["groups"]
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    pad_id = run["tokenizer"].pad_token_id
    model.train()
    # two passes over the same batches: the first meets each sequence length for the first time (on a
    # GPU a new shape costs kernel selection and loading, up to seconds a step, once), the second is the
    # steady state a long run spends its time in; both are reported
    batches = [collate(run["train"][i * args.batch_size:(i + 1) * args.batch_size], pad_id, args.pad_multiple) for i in range(args.steps)]
    passes = []
    for _ in range(2):
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            lm_losses(model, batch["input_ids"].to(device), batch["labels"], "clm",  # the loss domix instruct takes
                      attention_mask=batch["attention_mask"].to(device))[0].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        passes.append(times)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    return {"step_s": statistics.median(passes[1]), "first_pass_step_s": statistics.median(passes[0]),
            "peak_mb": peak_memory_mb(device), "trainable": trainable,
            "total": run["total_params"], "dtype": str(run["dtype"]).removeprefix("torch."), "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=".cache/smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16, help="each adapter's rank (LoRA/DoRA get twice it)")
    parser.add_argument("--steps", type=int, default=4, help="batches per run, each timed twice (first pass, second pass)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["domix", "lora", "dora"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--pad-multiple", type=int, default=1,
                        help="pad each batch to a multiple of this many tokens, as domix instruct --pad-multiple (fewer shapes)")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU that has it, float32 otherwise")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--task", default=str(TASK), help="aspect-sentiment rows (text, text_pair, label) made into instructions")
    parser.add_argument("--domain", action="append", metavar="NAME=PATH", help="a corpus for an adapter (repeat; default: two shared ones)")
    parser.add_argument("--row", action="append", metavar="NAME=YAML",
                        help="time a domix instruct settings file instead (repeat; the methods, data and shapes are the files')")
    parser.add_argument("--json", default="benchmarks/results/instruct_memory.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--row-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for row in args.row or []:
        if "=" not in row or not Path(row.split("=", 1)[1]).is_file():
            parser.error(f"--row {row}: give NAME=YAML, YAML a domix instruct settings file that exists")
    rows_given = dict(r.split("=", 1) for r in args.row or [])
    if rows_given:
        args.methods = list(rows_given)
    args.domains = dict(d.split("=", 1) for d in args.domain) if args.domain else CORPORA
    if args.child:
        print(json.dumps(child(args)))
        return

    runs = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        train = root / "train.jsonl"
        if not rows_given:
            write_instructions(Path(args.task), train, 40 * args.batch_size)
        if "domix" in args.methods and not rows_given:
            make_adapters(args, root / "store")
        for _ in range(args.repeats):
            for method in args.methods:  # interleaved: a drift of a shared machine hits every method alike
                cmd = [sys.executable, __file__, *sys.argv[1:], "--child", "--method", method, "--store", str(root / "store"),
                       "--train", str(train)] + (["--row-file", rows_given[method]] if rows_given else [])
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(out.stderr)
                runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = {m: {"step_s": statistics.median(r["step_s"] for r in rs),
                "first_pass_step_s": statistics.median(r["first_pass_step_s"] for r in rs), "peak_mb": statistics.median(r["peak_mb"] for r in rs),
                "trainable": rs[0]["trainable"], "total": rs[0]["total"], "runs": rs} for m, rs in runs.items()}
    first = next(iter(runs.values()))[0]
    what = f"rows {', '.join(f'{k}={v}' for k, v in rows_given.items())}, their batches and lengths" if rows_given \
        else f"{args.model}: batch {args.batch_size} x {args.max_length} tokens"
    checkpointing = "" if rows_given else f", gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
    print(f"{what}, {first['dtype']} on {first['device']}{checkpointing}; median of {args.repeats} runs x {args.steps} steps")
    ref = rows.get("dora")
    print(f"{'method':7} {'trainable':>11} {'%':>6} {'peak MB':>8} {'step s':>7} {'peak vs DoRA':>13} {'step vs DoRA':>13} {'1st pass s':>11}")
    for m, r in rows.items():
        vs = f"{r['peak_mb'] / ref['peak_mb']:>13.2f} {r['step_s'] / ref['step_s']:>13.2f}" if ref else " " * 27
        print(f"{m:7} {r['trainable']:>11,} {100 * r['trainable'] / r['total']:>6.2f} {r['peak_mb']:>8.0f} {r['step_s']:>7.2f} {vs} {r['first_pass_step_s']:>11.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    unused = ("child", "method", "store", "train", "domain", "row_file") + (  # --row: the files set these
        ("model", "batch_size", "max_length", "rank", "task", "domains", "dtype", "device", "gradient_checkpointing") if rows_given else ())
    settings = {k: v for k, v in vars(args).items() if k not in unused}
    if rows_given:
        settings["batches"] = (f"the first {args.steps} batches of each row's training records (file order, after the dev slice), "
                               "each timed twice; the second pass")
    Path(args.json).write_text(json.dumps({"settings": settings,
                                           "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
