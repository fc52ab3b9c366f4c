"""Do a store's modules carry their domains? Held-out LM loss of every module on every corpus, what training cost, and
(LoRA stores) how far training moved the modules and which ones a task's inputs excite.

Any per-domain store: DoMIX's LoRA modules, MixDA's adapters, MoDE's experts (``domix pretrain --method ...``).

1. The module x corpus table: each domain's piece put on the base as stage 1 trained it, by its method's own
   loader (the registry's ``domain_model``: PEFT's ``PeftModel.from_pretrained`` for a LoRA module; MixDA's
   adapters and two-way gates; MoDE's experts and gates), scored on every domain's held-out slice (the slice
   ``domix pretrain`` set aside, rebuilt from the store's own settings), with the base model as the first row.
   A module that learned its domain lowers its own corpus's loss most; the diagonal equals the store's own
   "after" figures, measured while it trained.
2. What training cost, from the domains' manifests: steps, tokens, training and wall time, peak memory, and the
   weights each domain adds on disk (its safetensors files, MB); the store's wall time (a fused run's domains train
   together: its longest; otherwise their sum).
3. LoRA stores: how far training moved each module: ||A - A0|| / ||A0|| per layer, A0 the domain's initial draw
   made again by PEFT from the domain's seed (``domix pretrain`` seeds each domain from the run seed and its
   name), and ||B|| (B starts at zero); medians over layers.
4. LoRA stores, with ``--tasks``: which modules each task's inputs excite. All modules composed as a domix run
   starts them (P = c·I), the task's first test examples (``domix.methods.bridge.model.USAGE_EXAMPLES``, at the
   comparison's max length) run through; per layer, each module's own update on the tokens, ||s_j B_j A_j x||
   (RMS over tokens), shared out over the modules and averaged over layers. A module whose A learned its corpus's
   activations is excited more by in-domain text; the same start figure a domix run records (``bridge_usage``).

    python benchmarks/module_knowledge.py benchmarks/results/compare-dap/pretrain/domix \\
        --json benchmarks/results/compare-dap/module_knowledge.json
    python benchmarks/module_knowledge.py benchmarks/results/compare-dap/pretrain/domix --only-tasks --max-length 128 \\
        --tasks restaurant=../shared/data/tasks/restaurant chemprot=../shared/data/tasks/chemprot acl_arc=../shared/data/tasks/acl_arc \\
        --json benchmarks/results/compare-dap/module_knowledge.json
    python benchmarks/module_knowledge.py benchmarks/results/compare-dap-fair/pretrain/mixda \\
        --json benchmarks/results/compare-dap-fair/knowledge-mixda.json
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
    parser.add_argument("--only-tasks", action="store_true", help="part 4 alone (parts 1-3 evaluate every corpus: minutes)")
    args = parser.parse_args()
    tasks = dict(t.split("=", 1) for t in args.tasks)
    if any("=" not in t for t in args.tasks) or (args.only_tasks and not tasks):
        raise SystemExit("error: give tasks as NAME=PATH (--tasks restaurant=../shared/data/tasks/restaurant); --only-tasks needs --tasks")

    from domix.base_model import load_base_model, load_tokenizer
    from domix.console import quiet_third_party
    from domix.methods.registry import STAGE1
    from domix.pretraining.config import PretrainConfig
    from domix.system import configure_threads

    configure_threads()
    quiet_third_party()
    store = Path(args.store)
    run = json.loads((store / "run.json").read_text())
    if run.get("status") != "finished":
        raise SystemExit(f"error: {store} holds no finished pre-training run; let domix pretrain finish first")
    cfg = PretrainConfig(**run["config"])
    domain_model = STAGE1[cfg.method].domain_model
    if domain_model is None:
        raise SystemExit(f"error: {store} holds one model for all its domains ({cfg.method}), not a piece per domain; "
                         "give a store of domix pretrain --method domix, mixda or mode")
    lora = all((store / name / "adapter_model.safetensors").is_file() for name in cfg.domains)  # PEFT LoRA modules
    if tasks and not lora:
        raise SystemExit(f"error: --tasks reads LoRA modules composed by the bridge; {store}'s pieces are {cfg.method}'s")
    tokenizer, objective = load_tokenizer(cfg.model, cfg.objective)
    started = time.perf_counter()
    result = {"store": str(store), "method": cfg.method, "settings": run["config"]}
    if not args.only_tasks:
        base = load_base_model(cfg.model, objective, torch.float32, tokenizer).model
        result |= loss_table(store, cfg, base, tokenizer, objective, domain_model)
        result["cost"] = training_cost(store, list(cfg.domains))
        print_cost(result["cost"])
        if lora:
            result["movement"] = movement(store, cfg, base)
            print_movement(result["movement"])
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


def loss_table(store: Path, cfg, base, tokenizer, objective: str, domain_model) -> dict:
    """Part 1: the module x corpus held-out loss table, each domain's piece loaded by its method's ``domain_model``."""
    from domix.corpus import read_corpus
    from domix.engine.data import DomainData
    from domix.engine.loop import evaluate

    heldout = {name: DomainData.build(read_corpus(name, path, cfg.text_column), tokenizer, objective, cfg).heldout
               for name, path in cfg.domains.items()}

    def losses(model) -> dict[str, float]:
        with torch.no_grad():
            return {name: evaluate(model, blocks, objective, tokenizer, cfg, torch.device("cpu")) for name, blocks in heldout.items()}

    table = {"base": losses(base)}
    for name in cfg.domains:
        with domain_model(base, store / name) as model:
            table[name] = losses(model)
    print_loss_table(table, list(cfg.domains))
    return {"heldout_sequences": {n: len(b) for n, b in heldout.items()}, "loss": table}


def training_cost(store: Path, domains: list[str]) -> dict:
    """Part 2: what each domain's training cost, from its manifest, and the store's wall time."""
    manifests = {n: json.loads((store / n / "domix_manifest.json").read_text()) for n in domains}
    # what the store's weights add to a checkout: each domain's safetensors files on disk
    per_domain = {n: {"steps": m["training"].get("steps"), "tokens_seen": m["training"].get("tokens_seen"),
                      "corpus_tokens": m["corpus"].get("tokens"), "train_time_s": m.get("train_time_s"),
                      "wall_time_s": m.get("wall_time_s"), "peak_memory_mb": m.get("peak_memory_mb"),
                      "weights_mb": sum(f.stat().st_size for f in (store / n).glob("*.safetensors")) / 2**20}
                  for n, m in manifests.items()}
    from domix.store import store_wall_time

    fused = any(m["training"].get("fused_with") for m in manifests.values())
    return {"domains": per_domain, "fused": fused, "wall_time_s": store_wall_time(list(manifests.values())),
            "tokens_seen": sum(c["tokens_seen"] for c in per_domain.values()),
            "peak_memory_mb": max(c["peak_memory_mb"] for c in per_domain.values()),
            "weights_mb": sum(c["weights_mb"] for c in per_domain.values())}


def movement(store: Path, cfg, base) -> dict:
    """Part 3 (LoRA stores): how far training moved each module's A from its initial draw, and ||B||."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from domix.engine.loop import domain_seed

    out = {}
    for name in cfg.domains:
        folder = store / name
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
        out[name] = {"a_moved_median": statistics.median(moved), "a_moved_max": max(moved),
                     "b_norm_median": statistics.median(b_norms), "layers": len(a_keys)}
    return out


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


def print_loss_table(table: dict, domains: list[str]) -> None:
    print("held-out LM loss (nats per token), module x corpus; * marks each corpus's lowest")
    print(f"{'':12}" + "".join(f"{d:>12}" for d in domains))
    for row, scores in table.items():
        best = {d: min(table[r][d] for r in table) for d in domains}
        print(f"{row:12}" + "".join(f"{scores[d]:>11.4f}" + ("*" if scores[d] == best[d] else " ") for d in domains))
    print("\nchange against the base (negative: lower loss)")
    for row in domains:
        print(f"{row:12}" + "".join(f"{table[row][d] - table['base'][d]:>+12.4f}" for d in domains))


def print_cost(cost: dict) -> None:
    print(f"\nwhat training cost ({'fused: the domains trained together' if cost['fused'] else 'one domain after another'})")
    print(f"{'':12}{'steps':>8}{'tokens':>11}{'train s':>10}{'wall s':>10}{'peak MB':>10}{'weights MB':>12}")
    for name, c in cost["domains"].items():
        print(f"{name:12}{c['steps']:>8}{c['tokens_seen']:>11,}{c['train_time_s']:>10.0f}{c['wall_time_s']:>10.0f}{c['peak_memory_mb']:>10.0f}"
              f"{c['weights_mb']:>12.1f}")
    print(f"{'store':12}{'':>8}{cost['tokens_seen']:>11,}{'':>10}{cost['wall_time_s']:>10.0f}{cost['peak_memory_mb']:>10.0f}"
          f"{cost['weights_mb']:>12.1f}")


def print_movement(movement: dict) -> None:
    print("\nhow far training moved each module (medians over layers)")
    print(f"{'':12}{'|A-A0|/|A0|':>14}{'max':>9}{'|B|':>10}")
    for name, m in movement.items():
        print(f"{name:12}{m['a_moved_median']:>14.4f}{m['a_moved_max']:>9.4f}{m['b_norm_median']:>10.4f}")


if __name__ == "__main__":
    main()
