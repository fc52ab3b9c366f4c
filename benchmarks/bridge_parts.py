"""Which part of a trained bridge does what: the update by part, and the model with parts of P zeroed.

A DoMIX layer's update is B_cat diag(s) P A_cat. P's blocks fall into three parts: the diagonal
blocks P_ii of the composed modules (each module's own path, B_i P_ii A_i), the blocks between two
different modules (B_i P_ij A_j, i != j: one module's input directions feeding another's output
directions) and the blocks in the fresh block's row or column (``--new-rank``). For a ``domix
instruct`` model this prints the Frobenius norm of each part's update summed over layers, then the
model with one part zeroed at a time: its dev loss (the row's held-out records, per response token)
and its retention (LM loss change on general text against the base), to tell which part the task
needs and which part moves general text.

    python benchmarks/bridge_parts.py runs/commonsense/rows/domix runs/commonsense/configs/rows/domix.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from domix import atomic
from domix.errors import DomixError
from domix.llm.config import InstructConfig
from domix.llm.data import encode_examples
from domix.llm.model import load_causal_task_model
from domix.llm.train import train_dev_examples, dev_loss
from domix.methods.bridge.layer import BridgedLinear
from domix.retention import retention
from domix.settings import build_config


def part_masks(ranks: list[int], fresh: bool) -> dict[str, torch.Tensor]:
    """0/1 masks over P for each part; block 0 is the fresh block when ``fresh``."""
    edges = torch.tensor([0] + ranks).cumsum(0).tolist()
    total = edges[-1]
    masks = {name: torch.zeros(total, total) for name in ("own", "cross", "fresh")}
    for i in range(len(ranks)):
        for j in range(len(ranks)):
            part = "fresh" if fresh and 0 in (i, j) else ("own" if i == j else "cross")
            masks[part][edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = 1
    return {name: mask for name, mask in masks.items() if mask.any()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("row", help="a domix instruct run folder (with model/ and result.json) of a bridged method")
    parser.add_argument("config", help="the run's settings (YAML), for its dev records and general text")
    parser.add_argument("--out", help="write the table as JSON here too")
    args = parser.parse_args(argv)
    try:
        table = bridge_parts(args.row, args.config)
    except DomixError as err:
        print(f"bridge_parts: error: {err}", file=sys.stderr)
        return 2
    if args.out:
        atomic.write_json(Path(args.out), table)
    return 0


def bridge_parts(row_folder: str, config: str) -> dict:
    """Print and return the table of ``row_folder`` (a bridged instruct run) trained with the settings in ``config``."""
    cfg = build_config(InstructConfig, config, {})  # read as `domix instruct --config` reads it (recipe, types, checks)
    if not cfg.general:
        raise DomixError(f"{config} names no general text (general:); retention needs it")
    model, tokenizer, record = load_causal_task_model(Path(row_folder) / "model")
    layers = [m for m in model.modules() if isinstance(m, BridgedLinear)]
    if not layers:
        raise DomixError(f"{row_folder} holds no bridge (method {record['method']}); give the row of a method that bridges modules, such as domix or cat")
    new_rank = (record.get("bridge") or {}).get("new_rank")
    ranks = ([new_rank] if new_rank else []) + [m["rank"] for m in record["modules"]]
    masks = part_masks(ranks, bool(new_rank))
    _, dev_examples = train_dev_examples(cfg)
    dev_rows, _ = encode_examples(dev_examples, tokenizer, cfg.template, cfg.max_length, "dev")

    norms = {name: 0.0 for name in ["all", *masks]}
    with torch.no_grad():
        for layer in layers:
            B = layer.lora_B * layer.scales
            norms["all"] += float((B @ layer.bridge @ layer.lora_A).norm() ** 2)
            for name, mask in masks.items():
                norms[name] += float((B @ (layer.bridge * mask) @ layer.lora_A).norm() ** 2)
    trained = [layer.bridge.detach().clone() for layer in layers]

    rows = []
    for zeroed in [None, *masks]:
        with torch.no_grad():
            for layer, P in zip(layers, trained):
                layer.bridge.copy_(P if zeroed is None else P * (1 - masks[zeroed]))
        kept = retention(model, record["base_model"]["name"], cfg.general, cfg.max_length, cfg.general_blocks, cfg.batch_size, "cpu")
        rows.append({"P": "as trained" if zeroed is None else f"{zeroed} blocks zeroed",
                     "update_norm": norms["all"] ** 0.5 if zeroed is None else norms[zeroed] ** 0.5,
                     "dev_loss": dev_loss(model, dev_rows, tokenizer.pad_token_id, cfg.batch_size, "cpu"),
                     "general_loss_change": kept["change"]})
    print(f"{row_folder}: blocks of rank {ranks}{' (the first is the fresh block)' if new_rank else ''}; "
          f"{len(layers)} layers; dev loss on {len(dev_rows)} held-out records; retention on {cfg.general}")
    print(f"{'P':<24}{'|update| of the part':>22}{'dev loss':>10}{'general LM loss change':>24}")
    for row in rows:
        print(f"{row['P']:<24}{row['update_norm']:>22.2f}{row['dev_loss']:>10.4f}{row['general_loss_change']:>+24.3f}")
    print("(|update| of the part: the first line is the whole update's norm, the others the zeroed part's)")
    return {"row": row_folder, "ranks": ranks, "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
