"""DoMIX stage 2 (docs/methods.md §1): the domain modules concatenated, a bridge P between them.

``domix`` trains P (in its own optimizer group, with its own learning rate and weight decay, as
the published code does), B_cat and the head. ``domix_fixed`` keeps P frozen at its initial value,
and ``cat`` keeps it frozen at the identity: PEFT's ``add_weighted_adapter(..., combination_type="cat")``
with weights 1. Comparing the three shows what training the bridge buys.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from domix.methods.base import WEIGHTS_FILE, Probe, TaskMethod, head_groups, load_head, save_head_tensors
from domix.methods.bridge.config import BridgeConfig
from domix.methods.bridge.model import (USAGE_EXAMPLES, bridge_input_usage, bridge_tensors, bridge_usage, bridged_layers, compose, fold,
                                       fresh_module, restore_bridges, update_maps)
from domix.store import DomainModule, shared_initialisation


class Bridge(TaskMethod):
    bridge_trains = True

    def p_init(self, cfg):
        return cfg.method_options.p_init

    def build(self, model: nn.Module, head: list[str], modules: list[DomainModule], cfg) -> tuple[nn.Module, list[dict]]:
        warning = shared_initialisation(modules)
        if warning:
            print(warning)
        # the modules are a set, not a sequence: in exact arithmetic the bridge is permutation-equivariant (P starts at
        # c·I), but floating-point sums in another column order drift apart over training (1.6 macro-F1 points on
        # ChemProt after 8 epochs). One layout, by name, makes the run the same bit for bit whatever order they come in
        modules = sorted(modules, key=lambda m: m.name)
        if cfg.method_options.new_rank:
            modules = [fresh_module(modules, cfg.method_options.new_rank, cfg.seed)] + modules
            print(f"domix: a fresh block of rank {cfg.method_options.new_rank} (A random and frozen, B zero) goes first in the bridge, "
                  f"before {', '.join(m.name for m in modules[1:])}")
        own = cfg.method_options  # the bridge's settings (BridgeSettings)
        bridge = BridgeConfig(p_init=self.p_init(cfg), p_lr=own.p_lr, p_weight_decay=own.p_weight_decay, b_lr=own.b_lr,
                              p_blocks=own.p_blocks)
        compose(model, modules, bridge)
        # the update as it starts (the modules' B, P's init), for the usage on a classification task's inputs (record);
        # a causal LM (domix instruct, no new head) has no test inputs to read it on: no copy of every B
        self.start_maps = update_maps(model) if head else None
        # one rate per group: modules that adapt only some layers give those layers another c (compose), not another rate
        total_rank = sum(m.rank for m in modules)
        p_lr, b_lr = bridge.learning_rates(cfg.lr, total_rank, len(modules))
        self.rates = {"p": p_lr, "b": b_lr}  # what "matched" and "Nx" came to, for the record
        warning = self.bridge_trains and bridge.fast_bridge_warning(p_lr, total_rank, len(modules))
        if warning:
            print(warning)
        layers = bridged_layers(model).values()
        groups = [{"params": [m.lora_B for m in layers], "lr": b_lr, "weight_decay": cfg.weight_decay}]
        if head:  # a causal LM (domix instruct) has no new head
            groups.append(head_groups(model, head, cfg))
        if not self.bridge_trains:
            for m in layers:
                m.bridge.requires_grad_(False)
            return model, groups
        return model, [{"params": [m.bridge for m in layers], "lr": p_lr, "weight_decay": cfg.method_options.p_weight_decay}] + groups

    def bridge_record(self, cfg) -> dict | None:
        return {"p_init": cfg.method_options.p_init, "p_lr": cfg.method_options.p_lr, "p_weight_decay": cfg.method_options.p_weight_decay,
                "b_lr": cfg.method_options.b_lr, "p_blocks": cfg.method_options.p_blocks, "trained": self.bridge_trains,
                "new_rank": cfg.method_options.new_rank, "learning_rates": {"p": self.rates["p"] if self.bridge_trains else None, "b": self.rates["b"]}}

    def record(self, model: nn.Module, pieces: list, cfg, probe: Probe | None = None) -> dict:
        usage = bridge_usage(model)
        if probe is not None and self.start_maps is not None:  # a classification task: the usage on its test inputs too
            usage["inputs"] = bridge_input_usage(model, {"start": self.start_maps, "end": update_maps(model)},
                                                 probe.rows[:USAGE_EXAMPLES], probe.pad_id, cfg.batch_size, probe.device)
        return {**super().record(model, pieces, cfg, probe), "layers": sorted(bridged_layers(model)),
                "bridge": self.bridge_record(cfg), "bridge_usage": usage}

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        save_head_tensors(model, record["head"], bridge_tensors(model), folder, WEIGHTS_FILE)

    def load(self, model: nn.Module, record: dict, folder: Path) -> nn.Module:
        from safetensors.torch import load_file

        tensors = load_file(str(folder / WEIGHTS_FILE))
        restore_bridges(model, tensors, record["layers"])
        load_head(model, record["head"], tensors)
        return model

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        return fold(model)  # W' = W + B_cat diag(s) P A_cat


class FixedBridge(Bridge):
    bridge_trains = False


class Cat(Bridge):
    bridge_trains = False

    def p_init(self, cfg):
        return "identity"

    def bridge_record(self, cfg) -> dict | None:
        return {"new_rank": cfg.method_options.new_rank} if cfg.method_options.new_rank else None
