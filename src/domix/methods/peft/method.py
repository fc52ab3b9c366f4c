"""LoRA, LoRA-FA and DoRA task methods, built by PEFT (no code of our own: PEFT does them all).

From the base: rank ``--lora-rank`` (default: the modules' total rank, else the recipe's default),
alpha 2·rank, B zero, on the modules' layers (else every linear layer of every block, or the
recipe's ``target_modules``). LoRA-FA freezes A at its random init, so only B and the head train:
DoMIX's trainable shape without any domain knowledge in A. From a module (``--init-module``): its
rank, alpha and trained pairs, so training starts at the base plus that module (for DoRA the
magnitude is re-initialised to the norm of the merged weight, as DoRA does for a fresh adapter).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from domix.base_model import resolve_target_modules
from domix.errors import DomixError
from domix.methods.base import TaskMethod
from domix.store import DomainModule


class Lora(TaskMethod):
    use_dora = False
    freeze_A = False

    def build(self, model: nn.Module, head: list[str], modules: list[DomainModule], cfg) -> tuple[nn.Module, list[dict]]:
        given = getattr(cfg, "target_modules", None) or cfg.LORA_TARGETS
        if given:
            targets = layers = resolve_target_modules(model, given)[1]
        elif modules:
            targets = layers = sorted({layer for m in modules for layer in m.lora_A})
        else:  # PEFT gets the pattern (a short config), the record the layers it matches
            targets, layers = resolve_target_modules(model, None)
        rank = cfg.lora_rank or sum(m.rank for m in modules) or cfg.LORA_RANK
        init = modules[0] if getattr(cfg, "init_module", None) else None
        peft_model, groups = build_peft(model, head, targets, cfg, rank, init, self.use_dora, self.freeze_A)
        self.layers, self.rank = (sorted(init.lora_A), init.rank) if init else (layers, rank)
        return peft_model, groups

    def record(self, model: nn.Module, pieces: list, cfg, probe=None) -> dict:
        return {**super().record(model, pieces, cfg, probe), "layers": self.layers, "lora_rank": self.rank}

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        model.save_pretrained(folder)

    def load(self, model: nn.Module, record: dict, folder: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, folder)

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        return model.merge_and_unload()


class LoraFA(Lora):
    freeze_A = True


class Dora(Lora):
    use_dora = True


def build_peft(model: nn.Module, head: list[str], targets: list[str] | str, cfg, rank: int, init: DomainModule | None = None,
               use_dora: bool = False, freeze_A: bool = False) -> tuple[nn.Module, list[dict]]:
    """A PEFT LoRA (DoRA with ``use_dora``) of ``rank`` on ``targets``, head trained; ``init``: start from that module."""
    from peft import LoraConfig, get_peft_model

    head_modules = sorted({n.rsplit(".", 1)[0] for n in head})
    alpha = 2 * rank
    if init is not None:
        targets, rank, alpha = sorted(init.lora_A), init.rank, init.adapter_config["lora_alpha"]
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, modules_to_save=head_modules,
                                                  use_dora=use_dora, use_rslora=bool(init and init.adapter_config.get("use_rslora"))))
    if init is not None:
        _load_pairs(peft_model, init)
    if freeze_A:
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    groups = [{"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    return peft_model, groups


@torch.no_grad()
def _load_pairs(peft_model: nn.Module, module: DomainModule) -> None:
    named = dict(peft_model.base_model.model.named_modules())
    for layer, A in module.lora_A.items():
        target = named.get(layer)
        if target is None or not hasattr(target, "lora_A"):
            raise DomixError(f"module {module.name!r} adapts layer {layer!r}, which this model does not have; it was trained on another base model")
        weight_A, weight_B = target.lora_A["default"].weight, target.lora_B["default"].weight
        if weight_A.shape != A.shape or weight_B.shape != module.lora_B[layer].shape:
            raise DomixError(f"module {module.name!r} has shape {tuple(module.lora_B[layer].shape[:1]) + tuple(A.shape[1:])} "
                             f"for layer {layer!r}, which does not fit this model; it belongs to another base model")
        weight_A.copy_(A)
        weight_B.copy_(module.lora_B[layer])
        if getattr(target, "lora_magnitude_vector", None):
            target.lora_magnitude_vector["default"].update_layer(
                base_layer=target.get_base_layer(), lora_A=weight_A, lora_B=weight_B, scaling=target.scaling["default"])
