"""Do a store's modules carry their domains? Held-out LM loss of every module on every corpus, and how far training moved them.

1. The module x corpus table: each module loaded with PEFT alone (``PeftModel.from_pretrained``) onto the
   base, scored on every domain's held-out slice (the slice ``domix pretrain`` set aside, rebuilt from the
   store's own settings), with the base model as the first row. A module that learned its domain lowers
   its own corpus's loss most; the diagonal equals the store's own "after" figures.
2. How far training moved each module: ||A - A0|| / ||A0|| per layer, A0 the domain's initial draw made
   again by PEFT from the domain's seed (``domix pretrain`` seeds each domain from the run seed and its
   name), and ||B|| (B starts at zero); medians over layers.
3. With ``--tasks``: which modules each task's inputs excite. All modules composed as a domix run starts them
   (P = c·I), the task's first test examples (``domix.methods.bridge.model.USAGE_EXAMPLES``, at the comparison's
   max length) run through; per layer, each module's own update on the tokens, ||s_j B_j A_j x|| (RMS over
   tokens), shared out over the modules and averaged over layers. A module whose A learned its corpus's
   activations is excited more by in-domain text; the same start figure a domix run records (``bridge_usage``).

    python benchmarks/module_knowledge.py benchmarks/results/compare-dap/pretrain/domix \\
        --json benchmarks/results/compare-dap/module_knowledge.json
    python benchmarks/module_knowledge.py benchmarks/results/compare-dap/pretrain/domix --only-tasks --max-length 128 \\
        --tasks restaurant=../shared/data/tasks/restaurant chemprot=../shared/data/tasks/chemprot acl_arc=../shared/data/tasks/acl_arc \\
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
    parser.add_argument("--json", help="write the figures here (into the file's figures, if it has some: each part replaces its own)")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="NAME=PATH", help="tasks whose test inputs to read (part 3)")
    parser.add_argument("--max-length", type=int, default=128, help="the tasks' max length in tokens (the comparison's)")
    parser.add_argument("--only-tasks", action="store_true", help="part 3 alone (parts 1-2 evaluate every corpus: minutes)")
    args = parser.parse_args()
    tasks = dict(t.split("=", 1) for t in args.tasks)
    if any("=" not in t for t in args.tasks) or (args.only_tasks and not tasks):
        raise SystemExit("error: give tasks as NAME=PATH (--tasks restaurant=../shared/data/tasks/restaurant); --only-tasks needs --tasks")

    from domix.base_model import load_base_model, load_tokenizer
    from domix.pretraining.config import PretrainConfig
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
    started = time.perf_counter()
    result = {"store": str(store), "settings": run["config"]}
    if not args.only_tasks:
        result |= loss_and_movement(store, cfg, load_base_model(cfg.model, objective, torch.float32, tokenizer).model, tokenizer, objective)
        result["seconds"] = round(time.perf_counter() - started, 1)
    if tasks:  # a fresh base: composing replaces its layers in place
        started = time.perf_counter()
        base = load_base_model(cfg.model, objective, torch.float32, tokenizer).model
        result["task_inputs"] = task_inputs(store, base, tasks, args.max_length, tokenizer)
        result["task_inputs_seconds"] = round(time.perf_counter() - started, 1)
        print_task_inputs(result["task_inputs"])
    if args.json:
        from domix.atomic import write_json

        path = Path(args.json)
        write_json(path, (json.loads(path.read_text()) if path.is_file() else {}) | result)


def loss_and_movement(store: Path, cfg, base, tokenizer, objective: str) -> dict:
    """Parts 1 and 2: the module x corpus loss table and how far training moved each module."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file

    from domix.corpus import read_corpus
    from domix.engine.data import DomainData
    from domix.engine.loop import domain_seed, evaluate

    heldout = {name: DomainData.build(read_corpus(name, path, cfg.text_column), tokenizer, objective, cfg).heldout
               for name, path in cfg.domains.items()}

    def losses(model) -> dict[str, float]:
        with torch.no_grad():
            return {name: evaluate(model, blocks, objective, tokenizer, cfg, torch.device("cpu")) for name, blocks in heldout.items()}

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
    return {"heldout_sequences": {n: len(b) for n, b in heldout.items()},
            "loss": table, "movement": movement, "steps": {n: m.get("training", {}).get("steps") for n, m in manifests.items()},
            "tokens_seen": {n: m["training"].get("tokens_seen") for n, m in manifests.items()},
            "corpus_tokens": {n: m["corpus"].get("tokens") for n, m in manifests.items()}}


def task_inputs(store: Path, model, tasks: dict[str, str], max_length: int, tokenizer) -> dict:
    """Part 3: per task, each module's share of the composed update on the task's test inputs, and its RMS size.
    ``model`` is the base; the modules are composed into it in place."""
    from domix.comparison.summary import layer_mean_shares
    from domix.methods.bridge import BridgeConfig, compose
    from domix.methods.bridge.model import USAGE_EXAMPLES, bridge_input_usage, bridged_layers, update_maps
    from domix.store import load_store
    from domix.tasks import encode, read_task

    compose(model, load_store(store), BridgeConfig())
    layers = bridged_layers(model)
    # s_j B_j A_j, each module's own update: each layer's c left out (a layer that fewer modules adapt has another c)
    maps = {name: m / layers[name].bridge[0, 0].item() for name, m in update_maps(model).items()}
    domains = [d for d, _ in next(iter(layers.values())).blocks]
    out = {}
    for name, path in tasks.items():
        rows = encode(read_task(path).splits["test"], tokenizer, max_length)[:USAGE_EXAMPLES]
        usage = bridge_input_usage(model, {"modules": maps}, rows, tokenizer.pad_token_id, 16, "cpu")
        per_layer = usage["norms"]["modules"]
        out[name] = {"examples": usage["examples"], "tokens": usage["tokens"], "share": layer_mean_shares(domains, per_layer),
                     "rms": {d: statistics.fmean(layer[j] for layer in per_layer) for j, d in enumerate(domains)}}
    return out


def print_task_inputs(figures: dict) -> None:
    domains = list(next(iter(figures.values()))["share"])
    print("\neach module's share of the composed update on each task's test inputs (P = c·I; mean over layers)")
    print(f"{'':12}" + "".join(f"{d:>12}" for d in domains) + "   examples")
    for task, f in figures.items():
        top = max(f["share"], key=f["share"].get)
        print(f"{task:12}" + "".join(f"{f['share'][d]:>11.3f}" + ("*" if d == top else " ") for d in domains) + f"   {f['examples']}")


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
