"""One DAP step of K domains, fused against sequential, timed and profiled in one process.

  fused       the K domains' rows in one batch over the shared frozen base (domix's fused layers)
  sequential  K PEFT LoRA models' steps one after another, each on its own rows

Forward and backward only (the LoRA optimizer steps are the same either way and small), same
tokens for both, random weights for the LoRA pairs. Prints the median step time of each, their
ratio, and the profiler's top operators by self time, so a change to the fused layers can be
judged by the operators it removes. ``--plain-loss`` computes the loss from whole logits (the way
before the chunked loss, and how to profile an older checkout).

    python benchmarks/fused_step_profile.py --model .cache/smollm2-135m --domains 3 --batch-size 4 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def losses(model, ids: torch.Tensor, spans: list[tuple[int, int]], plain: bool) -> list[torch.Tensor]:
    """Each span's mean causal-LM loss."""
    if not plain:
        from domix.lm_loss import lm_losses

        return lm_losses(model, ids, ids, "clm", spans=spans)
    # as domix computed it before the chunked loss: one cross-entropy over the whole logits, then each span's mean
    logits = model(input_ids=ids).logits[:, :-1]
    token = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1)
    return [token[s:e].mean() for s, e in spans]


def timed(step, repeats: int) -> tuple[float, list[float]]:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def profile(step, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=".cache/smollm2-135m")
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="profiler rows to print")
    parser.add_argument("--plain-loss", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from domix.base_model import load_base_model, resolve_target_modules
    from domix.methods.bridge.fused import install, uninstall
    from domix.pretraining.config import PretrainConfig

    cfg = PretrainConfig(model=args.model)
    base = load_base_model(args.model)
    model = base.model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    targets, _ = resolve_target_modules(model, cfg.target_modules)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(base.tokenizer), (args.domains * args.batch_size, args.seq_len), generator=g)
    spans = [(k * args.batch_size, (k + 1) * args.batch_size) for k in range(args.domains)]
    results, tables = {}, {}

    # fused: every domain's pair in each targeted layer
    peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets))
    layers = [n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    model = peft_model.unload()
    shapes = {n: (model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in layers}
    initial = {f"d{k}": {n: (torch.randn(cfg.lora_rank, i, generator=g) / i**0.5, torch.randn(o, cfg.lora_rank, generator=g) / cfg.lora_rank)
                         for n, (i, o) in shapes.items()} for k in range(args.domains)}
    segments, fused = install(model, initial, cfg.alpha / cfg.lora_rank, cfg.dropout)

    def fused_step() -> None:
        segments.spans = [(k, s, e) for k, (s, e) in enumerate(spans)]
        torch.stack(losses(model, ids, spans, args.plain_loss)).sum().backward()
        for layer in fused.values():
            for p in layer.parameters():
                p.grad = None

    results["fused"] = timed(fused_step, args.repeats)
    tables["fused"] = profile(fused_step, args.top)
    uninstall(model, fused)

    # sequential: one PEFT LoRA model per domain, one after another
    peft_model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets))

    def sequential_step() -> None:
        for s, e in spans:
            losses(peft_model, ids[s:e], [(0, e - s)], args.plain_loss)[0].backward()
            peft_model.zero_grad(set_to_none=True)

    results["sequential"] = timed(sequential_step, args.repeats)
    tables["sequential"] = profile(sequential_step, args.top)

    tokens = ids.numel()
    print(f"{args.domains} domains x {args.batch_size} x {args.seq_len} tokens, forward+backward, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads, {'plain' if args.plain_loss else 'chunked'} loss")
    for name, (median, _) in results.items():
        print(f"{name:11} {median:7.3f} s/step {tokens / median:8.0f} tokens/s")
    ratio = results["sequential"][0] / results["fused"][0]
    print(f"fused tokens/s vs sequential: {ratio:.2f}x")
    for name, table in tables.items():
        print(f"\n== {name}: top operators by self CPU time (one step)\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "threads": torch.get_num_threads(),
                                               "seconds_per_step": {n: r[0] for n, r in results.items()},
                                               "runs": {n: r[1] for n, r in results.items()}, "fused_vs_sequential": ratio,
                                               "profiles": tables}, indent=2) + "\n")


if __name__ == "__main__":
    main()
