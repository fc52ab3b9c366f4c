"""DoMIX fine-tuning vs PEFT LoRA of the same total rank: activation memory, peak memory, step time.

Each method runs in its own process (so peak resident memory is its own), on the same
sequence-classification model, targets and batch. Reported per method:
  - saved-for-backward: bytes autograd keeps across one training step (parameters excluded),
    measured exactly with saved-tensor hooks: the memory the bridge's custom backward saves;
  - peak memory: the process's peak RSS on CPU, or peak allocated memory on CUDA;
  - step time: median over the timed steps (after one warm-up step).

    python benchmarks/finetune_memory.py --modules runs/demo --batch-size 16 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def measure(method: str, args) -> dict:
    from domix.finetuning.config import FinetuneConfig
    from domix.finetuning.model import classification_model
    from domix.methods.registry import task_method
    from domix.store import load_store
    from domix.system import peak_memory_mb, resolve_device

    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    modules = load_store(args.modules)
    base = args.model or modules[0].manifest["base_model"]["name"]
    model, head = classification_model(base, ["a", "b", "c"], dtype, seed=0)
    model.config.pad_token_id = 0
    # LoRA takes the modules' layers and total rank: the same trainable shape as DoMIX
    hp = FinetuneConfig(method=method, p_weight_decay=0.0, lr=1e-4, seed=0)
    model, groups = task_method(method).build(model, head, modules, hp)
    model.to(device).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(groups)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(min(10, vocab - 1), min(1000, vocab), (args.batch_size, args.seq_len), generator=g).to(device)
    labels = torch.randint(0, 3, (args.batch_size,), generator=g).to(device)

    saved = 0

    def pack(t):
        nonlocal saved
        if not isinstance(t, torch.nn.Parameter):
            saved += t.numel() * t.element_size()
        return t

    times = []
    for step in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if step == 1:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model(input_ids=ids, labels=labels).loss
        else:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            times.append(time.perf_counter() - t0)
    trainable = sum(p.numel() for grp in groups for p in grp["params"])
    return {"method": method, "saved_for_backward_mb": round(saved / 2**20, 1), "peak_memory_mb": peak_memory_mb(device),
            "step_s_median": round(statistics.median(times), 3), "step_s_all": [round(t, 3) for t in times],
            "trainable": trainable, "device": str(device), "dtype": args.dtype}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", required=True, help="module store (domix pretrain --out)")
    parser.add_argument("--model", help="base model (default: the modules' own)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", default="benchmarks/results/finetune_memory.json")
    parser.add_argument("--only", choices=["domix", "lora"], help=argparse.SUPPRESS)  # one method, in a child process
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return
    rows = []
    for method in ("domix", "lora"):  # separate processes: each peak is its own
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", method], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    domix, lora = rows
    print(f"batch {args.batch_size} x {args.seq_len} tokens, {args.dtype} on {domix['device']}, {args.steps} timed steps")
    print(f"{'method':8} {'trainable':>11} {'saved for backward MB':>22} {'peak MB':>9} {'step s (median)':>16}")
    for r in rows:
        print(f"{r['method']:8} {r['trainable']:>11,} {r['saved_for_backward_mb']:>22.1f} {r['peak_memory_mb']:>9.0f} {r['step_s_median']:>16.3f}")
    ratios = {k: round(domix[k] / lora[k], 3) for k in ("saved_for_backward_mb", "peak_memory_mb", "step_s_median")}
    print("domix / lora: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
