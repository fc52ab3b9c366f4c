"""Domain pre-training of 3 domains four ways: tokens/s, wall time, peak memory, GFLOP/s.

  fused       K domains in one process, one pass over the shared frozen base (domix's default)
  sequential  the same PEFT LoRA runs one after another in one process (--no-fused)
  concurrent  one PEFT LoRA process per domain, all at once (peak memory summed; each process gets
              cores/3 threads, at least one, so they do not oversubscribe the machine)
  ncl         the full model trained with the same objective over the domains in sequence
  fused-ckpt  fused with --gradient-checkpointing (activations recomputed in backward), run only
              when named in --variants: the memory-for-compute trade a user can make

Same steps, batch and sequence length for all. Each variant runs in its own process(es), so
peak memory (resident on a CPU, allocated on a GPU) is its own; every variant is repeated and the
median reported. ``--domain NAME=PATH`` (repeated) replaces the shared corpora; ``--dtype`` and
``--device`` go to every run (a GPU's processes share it, as a user's would).

    python benchmarks/pretrain_throughput.py --model .cache/smollm2-135m --steps 6 --batch-size 4 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from step_rate import matmul_gflops  # benchmarks/ is on the path when a script of it runs

from domix.system import cores_given

DOMAINS = {"restaurant": "../shared/data/corpora/restaurant.txt", "biomed": "../shared/data/corpora/biomed.txt",
           "cs": "../shared/data/corpora/cs.txt"}


def flops_per_token(model_dir: str, full: bool) -> float:
    """Training FLOPs per token: 2·N forward, 2·N input gradients, and 2·N weight gradients when full,
    over the matrix-multiply parameters N (blocks plus the LM head's projection)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, f, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = d * getattr(c, "num_key_value_heads", c.num_attention_heads) // c.num_attention_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * f
    n = layers * per_layer + d * c.vocab_size
    return (6 if full else 4) * n


def domix_run(args, domains: dict[str, str], fused: bool, out: Path, processes: int = 1, checkpointing: bool = False) -> subprocess.Popen:
    """A domix pretrain process; with several at once each gets its share of the cores, as a user would set it."""
    cmd = [sys.executable, "-m", "domix", "pretrain", "--model", args.model, "--out", str(out), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--heldout-max-blocks", "1",
           "--fused" if fused else "--no-fused", "--checkpoint-every", "100000", "--dtype", args.dtype, "--device", args.device]
    cmd += ["--gradient-checkpointing"] if checkpointing else []
    for name, path in domains.items():
        cmd += ["--domain", f"{name}={path}"]
    threads = str(max(1, cores_given() // processes))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "DOMIX_THREADS": threads}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def summarise(outs: list[Path], procs: list[subprocess.Popen], started: float) -> dict:
    """Totals of one variant: tokens, training seconds (the longest process when several ran at once),
    and peak memory summed over its processes."""
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(err)
    ended = time.perf_counter()
    per_process = [[json.loads(m.read_text()) for m in out.glob("*/domix_manifest.json")] for out in outs]
    return {
        "tokens": sum(m["training"]["tokens_seen"] for ms in per_process for m in ms),
        "train_s": max(sum(m["train_time_s"] for m in ms) for ms in per_process),
        "wall_s": ended - started,
        "peak_mb": sum(max(m["peak_memory_mb"] for m in ms) for ms in per_process),
    }


def run_variant(name: str, args, root: Path) -> dict:
    t0 = time.perf_counter()
    if name in ("fused", "sequential", "fused-ckpt"):
        out = root / name
        procs = [domix_run(args, args.domains, name != "sequential", out, checkpointing=name == "fused-ckpt")]
        outs = [out]
    elif name == "concurrent":
        outs = [root / f"concurrent-{d}" for d in args.domains]
        procs = [domix_run(args, {d: p}, False, o, processes=len(args.domains)) for (d, p), o in zip(args.domains.items(), outs)]
    else:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--ncl-child"], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["wall_s"] = time.perf_counter() - t0
        return row
    return summarise(outs, procs, t0)


def ncl_child(args) -> dict:
    """Full-model training over the domains in sequence, same batches as domix's runs."""
    from transformers import get_linear_schedule_with_warmup

    from domix.base_model import load_base_model
    from domix.batches import lm_batch
    from domix.corpus import read_corpus
    from domix.lm_loss import lm_losses
    from domix.pretraining.config import PretrainConfig
    from domix.engine.loop import batch_rows, step_seed
    from domix.engine.data import DomainData
    from domix.system import DTYPES, peak_memory_mb, reset_peak_memory, resolve_device

    cfg = PretrainConfig(model=args.model, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, heldout_max_blocks=1)
    device = resolve_device(args.device)
    reset_peak_memory(device)
    base = load_base_model(args.model, dtype=DTYPES[args.dtype])
    model = base.model.to(device).train()
    tokens, train_s = 0, 0.0
    for name, path in args.domains.items():
        data = DomainData.build(read_corpus(name, path), base.tokenizer, base.objective, cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        for step in range(cfg.steps):
            blocks = data.train[batch_rows(len(data.train), cfg.batch_size, cfg.seed, step)]
            batch = lm_batch(blocks, base.objective, base.tokenizer, torch.Generator().manual_seed(step_seed(cfg.seed, step)))
            t0 = time.perf_counter()
            lm_losses(model, batch["input_ids"].to(device), batch["labels"], base.objective)[0].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_s += time.perf_counter() - t0
            tokens += blocks.numel()
    return {"tokens": tokens, "train_s": train_s, "peak_mb": peak_memory_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=".cache/smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["fused", "sequential", "concurrent", "ncl", "fused-ckpt"])
    parser.add_argument("--domain", action="append", metavar="NAME=PATH", help="a corpus (repeat; default: the three shared ones)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="benchmarks/results/pretrain_throughput.json")
    parser.add_argument("--ncl-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.domains = dict(d.split("=", 1) for d in args.domain) if args.domain else DOMAINS
    if args.ncl_child:
        print(json.dumps(ncl_child(args)))
        return

    rate = matmul_gflops(torch.device(args.device), getattr(torch, args.dtype))
    results = {v: [] for v in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:  # interleaved, so drifts of a shared machine hit all alike
            with tempfile.TemporaryDirectory() as root:
                results[variant].append(run_variant(variant, args, Path(root)))
    rows = {}
    for variant, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("tokens", "train_s", "wall_s", "peak_mb")}
        tok_s = med["tokens"] / med["train_s"]
        gflops = tok_s * flops_per_token(args.model, variant == "ncl") / 1e9
        rows[variant] = {**med, "tokens_per_s": tok_s, "gflops": gflops, "share_of_matmul_rate": gflops / rate, "runs": runs}
    fused = rows.get("fused")
    print(f"{len(args.domains)} domains x {args.steps} steps x {args.batch_size} x {args.seq_len} tokens, {args.dtype} on {args.device}; "
          f"median of {args.repeats}; machine matmul rate {rate:.1f} GFLOP/s ({args.dtype} 2048^3)")
    print(f"{'variant':11} {'tokens/s':>9} {'wall s':>7} {'peak MB':>8} {'GFLOP/s':>8} {'% of mm':>8} {'tok/s vs fused':>15} {'peak vs fused':>14}")
    for variant, r in rows.items():
        vs = (f"{r['tokens_per_s'] / fused['tokens_per_s']:>15.2f} {r['peak_mb'] / fused['peak_mb']:>14.2f}") if fused else ""
        print(f"{variant:11} {r['tokens_per_s']:>9.0f} {r['wall_s']:>7.0f} {r['peak_mb']:>8.0f} {r['gflops']:>8.1f} "
              f"{100 * r['share_of_matmul_rate']:>7.0f}% {vs}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"settings": vars(args), "matmul_gflops": rate, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
