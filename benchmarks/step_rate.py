"""Training steps of DAP, fine-tuning and instruct alone, in one process: tokens/s, GFLOP/s, share of the
machine's matrix-multiply rate.

  dap        domain pre-training of one LoRA module (PEFT LoRA, every linear layer; domix's stage 1)
  finetune   DoMIX task fine-tuning: the store's modules bridged, a classification head (domix finetune)
  instruct   DoMIX instruction tuning of the causal LM, loss on the response tokens (domix instruct)

Every step is the method's forward, backward and AdamW step on the same number of tokens (no
padding), timed after a warm-up step, median of the timed steps. FLOPs count the matrix products:
2 per weight per token forward and 2 backward (the input gradient: the base is frozen, so no weight
gradient), the LM head only over the tokens that are predicted (the loss is chunked over those);
the LoRA and bridge products and attention's own products are left out (under 5% here).

    python benchmarks/step_rate.py --model .cache/smollm2-135m --batch-size 8 --seq-len 128
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

CORPORA = {"restaurant": "../shared/data/corpora/restaurant.txt", "biomed": "../shared/data/corpora/biomed.txt",
           "cs": "../shared/data/corpora/cs.txt"}


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """The machine's matrix-multiply rate: an n x n x n product, median-free mean over ``repeats``."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block_and_head_params(config) -> tuple[int, int]:
    """Matrix-multiply weights of the transformer blocks, and of the LM head's projection."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = d * getattr(config, "num_key_value_heads", config.num_attention_heads) // config.num_attention_heads
    return layers * (d * d * 2 + d * kv * 2 + 3 * d * f), d * config.vocab_size


def timed(step, steps: int, device: torch.device) -> list[float]:
    times = []
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        step(i)
        _sync(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return times


def make_store(model: str, out: Path, dtype: str, device: str, corpora: dict = CORPORA) -> None:
    """Domain modules to bridge: their values do not matter for time, their shapes do."""
    cmd = [sys.executable, "-m", "domix", "pretrain", "--model", model, "--out", str(out), "--steps", "1", "--batch-size", "2",
           "--seq-len", "64", "--heldout-max-blocks", "1", "--dtype", dtype, "--device", device]
    for name, path in corpora.items():
        cmd += ["--domain", f"{name}={path}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def dap(args, device, dtype, ids):
    from peft import LoraConfig, get_peft_model

    from domix.base_model import load_base_model, resolve_target_modules
    from domix.lm_loss import lm_losses
    from domix.pretraining.config import PretrainConfig

    cfg = PretrainConfig(model=args.model)
    base = load_base_model(args.model, dtype=dtype)
    targets, _ = resolve_target_modules(base.model, cfg.target_modules)
    model = get_peft_model(base.model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.alpha, target_modules=targets)).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(_):
        lm_losses(model, ids, ids, "clm")[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, ids.numel() - ids.shape[0]  # predicted tokens: all but each row's first


def finetune(args, device, dtype, ids):
    from domix.finetuning.config import FinetuneConfig
    from domix.finetuning.model import classification_model
    from domix.methods.registry import task_method
    from domix.store import load_store

    modules = load_store(args.store)
    model, head = classification_model(args.model, ["a", "b", "c"], dtype, seed=0)
    model.config.pad_token_id = 0
    model, groups = task_method("domix").build(model, head, modules, FinetuneConfig(method="domix", seed=0))
    model.to(device).train()
    optimizer = torch.optim.AdamW(groups)
    labels = torch.randint(0, 3, (ids.shape[0],), generator=torch.Generator().manual_seed(0)).to(device)

    def step(_):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, 0


def instruct(args, device, dtype, ids):
    from domix.lm_loss import lm_losses
    from domix.llm.config import InstructConfig
    from domix.llm.train import prepare

    with tempfile.TemporaryDirectory() as root:
        train = Path(root) / "train.jsonl"
        train.write_text("".join(json.dumps({"prompt": f"Say {i}.", "response": str(i)}) + "\n" for i in range(4)))
        run = prepare(InstructConfig(train=str(train), model=args.model, modules=args.store, method="domix", out="unused",
                                     dtype=str(dtype).removeprefix("torch."), device=str(device)))
    model, groups = run["model"].train(), run["groups"]
    optimizer = torch.optim.AdamW(groups)
    labels = ids.clone()
    labels[:, : ids.shape[1] * 3 // 4] = -100  # the prompt: the first three quarters of each row

    def step(_):
        lm_losses(model, ids, labels, "clm")[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, int((labels[:, 1:] != -100).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=".cache/smollm2-135m")
    parser.add_argument("--store", help="a module store to bridge (default: one made here with domix pretrain --steps 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per kind (after one warm-up step)")
    parser.add_argument("--kinds", nargs="+", default=["dap", "finetune", "instruct"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="benchmarks/results/step_rate.json")
    args = parser.parse_args()
    from transformers import AutoConfig

    from domix.system import resolve_device

    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    config = AutoConfig.from_pretrained(args.model)
    blocks, head = block_and_head_params(config)
    rate = matmul_gflops(device, dtype)
    vocab = min(1000, config.vocab_size)
    ids = torch.randint(min(10, vocab - 1), vocab, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    with tempfile.TemporaryDirectory() as root:
        if args.store is None and {"finetune", "instruct"} & set(args.kinds):
            args.store = str(Path(root) / "store")
            make_store(args.model, Path(args.store), args.dtype, str(device))
        rows = {}
        for kind in args.kinds:
            step, predicted = {"dap": dap, "finetune": finetune, "instruct": instruct}[kind](args, device, dtype, ids)
            times = timed(step, args.steps, device)
            seconds = statistics.median(times)
            flops = 4 * blocks * ids.numel() + 4 * head * predicted
            rows[kind] = {"step_s": seconds, "tokens_per_s": ids.numel() / seconds, "gflops": flops / seconds / 1e9,
                          "share_of_matmul_rate": flops / seconds / 1e9 / rate, "gflop_per_step": flops / 1e9, "runs": times}
    print(f"{args.model}: {args.batch_size} x {args.seq_len} tokens a step, {args.dtype} on {device}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps; matrix-multiply rate {rate:.1f} GFLOP/s")
    print(f"{'kind':9} {'step s':>7} {'tokens/s':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} {'% of mm':>8}")
    for kind, r in rows.items():
        print(f"{kind:9} {r['step_s']:>7.2f} {r['tokens_per_s']:>9.0f} {r['gflop_per_step']:>11.1f} {r['gflops']:>8.1f} "
              f"{100 * r['share_of_matmul_rate']:>7.0f}%")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"settings": vars(args), "matmul_gflops": rate, "threads": torch.get_num_threads(),
                                           "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
