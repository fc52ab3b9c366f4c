"""MoDE generation with and without the key/value cache: time per generated token, and that both give
the same tokens. Without a cache every new token reruns the whole sequence (quadratic in its length).

The model: the base with MoDE blocks (--block-size layers each) and --domains experts of
--expert-layers layers, the experts perturbed from their backbone copies and the gates random, so the
experts count in every token. Greedy decoding of --new-tokens tokens from a --prompt-tokens prompt,
cached and uncached alternately, --repeats times each; medians.

    python benchmarks/mode_decoding.py --model .cache/smollm2-135m --json benchmarks/results/mode_decoding.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def build(model_name: str, block_size: int, expert_layers: int, domains: int, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from domix.base_model import find_blocks
    from domix.methods.mode.config import plan_blocks
    from domix.methods.mode.model import add_domain, expert_blocks, insert_blocks

    model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32).eval()
    n_layers = len(find_blocks(model)[1])
    insert_blocks(model, plan_blocks(n_layers, block_size=block_size, expert_layers=expert_layers))
    for d in range(domains):
        add_domain(model, f"domain{d}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in expert_blocks(model):
            for p in block.experts.parameters():
                p.add_(0.01 * p.std() * torch.randn(p.shape, generator=g))
            block.gate.weight.copy_(0.02 * torch.randn(block.gate.weight.shape, generator=g))
    return model, n_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".cache/smollm2-135m")
    parser.add_argument("--block-size", type=int, default=6)
    parser.add_argument("--expert-layers", type=int, default=2)
    parser.add_argument("--domains", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from domix.system import configure_threads

    threads = configure_threads()
    model, n_layers = build(args.model, args.block_size, args.expert_layers, args.domains)
    prompt = torch.randint(100, 1000, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        for _ in range(args.repeats):
            for cached in (True, False):
                started = time.perf_counter()
                outputs[cached] = model.generate(prompt, use_cache=cached, **settings)
                seconds[cached].append(time.perf_counter() - started)
    same = torch.equal(outputs[True], outputs[False])
    per_token = {c: statistics.median(s) / args.new_tokens for c, s in seconds.items()}
    rows = [("cached", per_token[True]), ("uncached", per_token[False])]
    print(f"MoDE on {args.model} ({n_layers} layers, blocks of {args.block_size}, {args.domains} domains x {args.expert_layers}-layer "
          f"experts), greedy, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, median of {args.repeats}, "
          f"{threads} thread(s)")
    print(f"{'decoding':10s} {'ms / token':>10s} {'ratio':>7s}")
    for name, value in rows:
        print(f"{name:10s} {1000 * value:10.1f} {value / per_token[True]:7.2f}x")
    print(f"same tokens cached and uncached: {same}")
    if args.json:
        from domix import atomic

        atomic.write_json(Path(args.json), {"settings": vars(args), "threads": threads, "layers": n_layers,
                                            "ms_per_token": {"cached": round(1000 * per_token[True], 2),
                                                             "uncached": round(1000 * per_token[False], 2)},
                                            "uncached_over_cached": round(per_token[False] / per_token[True], 2),
                                            "same_tokens": same, "seconds": {str(k): v for k, v in seconds.items()}})


if __name__ == "__main__":
    main()
