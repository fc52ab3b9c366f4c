"""Do a store's modules carry their domains? Held-out LM loss of every module on every corpus, and how far training moved them.

1. The module x corpus table: each module loaded with PEFT alone (``PeftModel.from_pretrained``) onto the
   base, scored on every domain's held-out slice (the slice ``domix pretrain`` set aside, rebuilt from the
   store's own settings), with the base model as the first row. A module that learned its domain lowers
   its own corpus's loss most; the diagonal equals the store's own "after" figures.
2. How far training moved each module: ||A - A0|| / ||A0|| per layer, A0 the domain's initial draw made
   again by PEFT from the domain's seed (``domix pretrain`` seeds each domain from the run seed and its
   name), and ||B|| (B starts at zero); medians over layers.

    python benchmarks/module_knowledge.py benchmarks/results/compare-dap/pretrain/domix \\
        --json benchmarks/results/compare-dap/module_knowledge.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="a finished domix pretrain output folder")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file

    from domix.base_model import load_base_model, load_tokenizer
    from domix.corpus import read_corpus
    from domix.engine.data import DomainData
    from domix.engine.loop import domain_seed, evaluate
    from domix.pretrain.config import PretrainConfig
    from domix.console import quiet_third_party
    from domix.system import configure_threads

    configure_threads()
    quiet_third_party()
    store = Path(args.store)
    run = json.loads((store / "run.json").read_text())
    if run.get("status") != "finished":
        raise SystemExit(f"error: {store} holds no finished pre-training run; let domix pretrain finish first")
    cfg = PretrainConfig(**run["config"])
    tokenizer, objective = load_tokenizer(cfg.model, cfg.objective)
    heldout = {name: DomainData.build(read_corpus(name, path, cfg.text_column), tokenizer, objective, cfg).heldout
               for name, path in cfg.domains.items()}
    base = load_base_model(cfg.model, objective, torch.float32, tokenizer).model
    device = torch.device("cpu")

    def losses(model) -> dict[str, float]:
        with torch.no_grad():
            return {name: evaluate(model, blocks, objective, tokenizer, cfg, device) for name, blocks in heldout.items()}

    started = time.perf_counter()
    table = {"base": losses(base)}
    movement = {}
    for name in cfg.domains:
        folder = store / name
        model = PeftModel.from_pretrained(base, str(folder))
        table[name] = losses(model)
        base = model.unload()
        trained = load_file(str(folder / "adapter_model.safetensors"))
        torch.manual_seed(domain_seed(cfg.seed, name))  # the domain's initial draw, made again by PEFT
        fresh = get_peft_model(base, LoraConfig.from_pretrained(str(folder)))
        initial = {k.replace("base_model.model.", "").replace(".default", ""): v.detach().clone()
                   for k, v in fresh.named_parameters() if ".lora_A." in k}
        base = fresh.unload()
        a_keys = [k for k in trained if ".lora_A." in k]
        moved = [float((trained[k] - initial[k.replace("base_model.model.", "")]).norm() / initial[k.replace("base_model.model.", "")].norm())
                 for k in a_keys]
        b_norms = [float(trained[k].norm()) for k in trained if ".lora_B." in k]
        movement[name] = {"a_moved_median": statistics.median(moved), "a_moved_max": max(moved),
                          "b_norm_median": statistics.median(b_norms), "layers": len(a_keys)}
    manifests = {n: json.loads((store / n / "domix_manifest.json").read_text()) for n in cfg.domains}
    print_tables(table, movement, list(cfg.domains))
    result = {"store": str(store), "settings": run["config"], "heldout_sequences": {n: len(b) for n, b in heldout.items()},
              "loss": table, "movement": movement, "steps": {n: m.get("training", {}).get("steps") for n, m in manifests.items()},
              "tokens_seen": {n: m["training"].get("tokens_seen") for n, m in manifests.items()},
              "corpus_tokens": {n: m["corpus"].get("tokens") for n, m in manifests.items()},
              "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def print_tables(table: dict, movement: dict, domains: list[str]) -> None:
    print("held-out LM loss (nats per token), module x corpus; * marks each corpus's lowest")
    print(f"{'':12}" + "".join(f"{d:>12}" for d in domains))
    for row, scores in table.items():
        best = {d: min(table[r][d] for r in table) for d in domains}
        print(f"{row:12}" + "".join(f"{scores[d]:>11.4f}" + ("*" if scores[d] == best[d] else " ") for d in domains))
    print("\nchange against the base (negative: lower loss)")
    for row in domains:
        print(f"{row:12}" + "".join(f"{table[row][d] - table['base'][d]:>+12.4f}" for d in domains))
    print("\nhow far training moved each module (medians over layers)")
    print(f"{'':12}{'|A-A0|/|A0|':>14}{'max':>9}{'|B|':>10}")
    for name, m in movement.items():
        print(f"{name:12}{m['a_moved_median']:>14.4f}{m['a_moved_max']:>9.4f}{m['b_norm_median']:>10.4f}")


if __name__ == "__main__":
    main()
