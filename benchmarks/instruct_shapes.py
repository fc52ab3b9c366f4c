"""How many batch shapes does a domix instruct run meet, and what does padding to a multiple cost?

A batch is as wide as its longest example, so a run over examples of many lengths meets a new (batch, width) shape at
most steps. On a GPU the first pass at a shape pays kernel selection and memory allocation (the lent H200 measured
domix's first-pass step at 1.91 s against DoRA's 0.50, five times its steady step: benchmarks/results/gpu_check.json);
``--pad-multiple N`` rounds every width up to a multiple of N, so a run meets a handful of shapes. This script replays
a run's batches exactly as ``domix instruct`` draws them (its examples, tokenization, seeded batch order) without
loading a model, and prints per multiple: the distinct shapes, the steps that meet a shape for the first time, and the
padding it adds (tokens computed beyond the longest example of each batch, as a share of the tokens without it).

    python benchmarks/instruct_shapes.py --train runs/commonsense/data/mixture.json --batch-size 16 --epochs 3 \\
        --json benchmarks/results/instruct_shapes.json
    python benchmarks/instruct_shapes.py --task ../shared/data/tasks/chemprot --train-limit 320 --epochs 4
    python benchmarks/instruct_shapes.py --task ../shared/data/tasks/chemprot --train-limit 320 --epochs 4 --group-by-length
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def replay(lengths: list[int], batch_size: int, seed: int, steps: int, multiple: int, grouped: bool = False) -> dict:
    """The shapes and padding of ``steps`` batches drawn as domix instruct draws them (engine.loop.step_batch; ``grouped``:
    its --group-by-length batches)."""
    from domix.engine.loop import step_batch

    seen, first_meetings, longest_total, padded_total = set(), 0, 0, 0
    real = 0
    for step in range(steps):
        rows = step_batch(lengths, batch_size, seed, step, grouped)
        own = [lengths[i] for i in rows]
        width = max(own)
        padded = -(-width // multiple) * multiple
        shape = (len(rows), padded)
        first_meetings += shape not in seen
        seen.add(shape)
        real += sum(own)
        longest_total += width * len(rows)
        padded_total += padded * len(rows)
    return {"multiple": multiple, "shapes": len(seen), "first_meetings": first_meetings, "steps": steps,
            "tokens": real, "computed": padded_total, "extra_over_longest": (padded_total - longest_total) / longest_total,
            "padding_share": (padded_total - real) / padded_total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--train", help="an instruction file, as domix instruct --train reads it")
    where.add_argument("--task", help="a labelled task folder, as domix instruct --task reads it")
    parser.add_argument("--model", default=".cache/smollm2-135m", help="whose tokenizer counts the tokens")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--seed", type=int, default=42, help="the run's seed (domix instruct's default)")
    parser.add_argument("--template", default="alpaca")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--group-by-length", action="store_true", help="the batches of domix instruct --group-by-length")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from domix.llm.config import InstructConfig
    from domix.llm.data import encode_examples
    from domix.llm.labelled import read_labelled
    from domix.llm.train import train_dev_examples

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.task:  # as domix instruct --task prepares it: every input cut to fit with the longest label
        labelled = read_labelled(args.task, None, args.train_limit, None, 0, score_test=False)
        labelled.fit(tokenizer, args.template, args.max_length)
        examples = labelled.examples["train"]
    else:
        cfg = InstructConfig(train=args.train, out="unused", model=args.model, method="lora", train_limit=args.train_limit)
        examples = train_dev_examples(cfg)[0]
    rows, _ = encode_examples(examples, tokenizer, args.template, args.max_length, "train")
    lengths = [len(ids) for ids, _ in rows]
    steps = args.epochs * math.ceil(len(lengths) / args.batch_size)
    table = [replay(lengths, args.batch_size, args.seed, steps, m, args.group_by_length) for m in args.multiples]
    print(f"{len(lengths)} training examples ({min(lengths)}-{max(lengths)} tokens), batch {args.batch_size}, {steps} steps"
          + (", length-grouped batches" if args.group_by_length else ""))
    print(f"{'multiple':>8} {'shapes':>7} {'new-shape steps':>16} {'extra tokens vs longest':>24} {'padding share':>14}")
    for r in table:
        print(f"{r['multiple']:>8} {r['shapes']:>7} {r['first_meetings']:>16} {100 * r['extra_over_longest']:>23.1f}% "
              f"{100 * r['padding_share']:>13.1f}%")
    if args.json:
        from domix.atomic import write_json

        write_json(Path(args.json), {"settings": vars(args), "examples": len(lengths), "table": table})


if __name__ == "__main__":
    main()
