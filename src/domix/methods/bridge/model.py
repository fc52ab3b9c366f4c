"""Putting bridged layers into a model, and folding them back into plain weights."""

from __future__ import annotations

import torch
from torch import nn

from domix.methods.bridge.config import BridgeConfig
from domix.methods.bridge.layer import BridgedLinear
from domix.base_model import set_submodule
from domix.errors import DomixError
from domix.store import DomainModule, locate


BRIDGE_PARTS = ("lora_A", "lora_B", "bridge", "scales")  # what a saved task model keeps of each bridged layer


def bridge_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every bridged layer's A_cat, B_cat, P and s, keyed ``{layer}.{part}``: what a task model saves."""
    # P as it acts (a block-diagonal bridge's masked entries are zero in it), so a reloaded layer needs no mask
    return {f"{name}.{part}": (layer.P if part == "bridge" else getattr(layer, part)).detach().cpu().contiguous()
            for name, layer in bridged_layers(model).items() for part in BRIDGE_PARTS}


def restore_bridges(model: nn.Module, tensors: dict[str, torch.Tensor], layers: list[str]) -> None:
    """Put back, in place, the bridged ``layers`` that :func:`bridge_tensors` saved."""
    named = dict(model.named_modules())
    for name in layers:
        part = {p: tensors[f"{name}.{p}"] for p in BRIDGE_PARTS}
        layer = BridgedLinear(named[name], part["lora_A"], part["lora_B"], part["scales"], 0.0, dtype=part["lora_A"].dtype)
        with torch.no_grad():
            layer.bridge.copy_(part["bridge"])
        set_submodule(model, name, layer)


def compose(model: nn.Module, modules: list[DomainModule], config: BridgeConfig | None = None) -> list[str]:
    """Replace every layer the modules adapt with a :class:`BridgedLinear`, in place.

    A layer's A_cat and B_cat take the modules that adapt it, in the order given (the Bridge gives them by name). The
    whole model is frozen except B_cat and P; the caller unfreezes the task head.
    Returns the names of the bridged layers.
    """
    if not modules:
        raise DomixError("no domain module to compose; give a store with at least one module")
    config = config or BridgeConfig()
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    named = dict(model.named_modules())
    layers = sorted({layer for m in modules for layer in m.lora_A})
    for p in model.parameters():
        p.requires_grad_(False)
    placed = []
    for layer in layers:
        where = locate(named, layer)  # the module's layer name, in this model (an LM's module fits its bare model too)
        base = named.get(where) if where is not None else None
        if not isinstance(base, nn.Linear):
            raise DomixError(f"domain modules adapt layer {layer!r}, which is not a linear layer of this model; "
                             "they were trained on another architecture")
        owners = [m for m in modules if layer in m.lora_A]
        A = torch.cat([m.lora_A[layer] for m in owners], dim=0)
        B = torch.cat([m.lora_B[layer] for m in owners], dim=1)
        if A.shape[1] != base.in_features or B.shape[0] != base.out_features:
            raise DomixError(f"domain modules have shape {B.shape[0]}x{A.shape[1]} for layer {layer!r}, "
                             f"but this model's layer is {base.out_features}x{base.in_features}; they belong to another base model")
        scales = torch.cat([torch.full((m.lora_A[layer].shape[0],), m.scaling) for m in owners])
        bridged = BridgedLinear(base, A, B, scales, config.initial_scale(A.shape[0], len(owners)), dtype=dtype)
        bridged.blocks = [(m.name, m.lora_A[layer].shape[0]) for m in owners]  # which columns are whose
        if config.p_blocks == "diagonal":
            bridged.keep_blocks([rank for _, rank in bridged.blocks])
        set_submodule(model, where, bridged.to(base.weight.device))
        placed.append(where)
    return placed


NEW_BLOCK = "new"  # the name of the run's own block (--new-rank) in records and bridge usage


def fresh_module(modules: list[DomainModule], rank: int, seed: int) -> DomainModule:
    """The run's own LoRA block for every layer the modules adapt, as the published LLM code adds before
    the bridge: A drawn as PEFT and nn.Linear draw it (Kaiming-uniform, a = sqrt(5)), B zero, the
    modules' scaling. It is concatenated first; like the modules' A, its A stays frozen, its B trains."""
    import math

    generator = torch.Generator().manual_seed(seed)
    shapes = {layer: (m.lora_A[layer].shape[1], m.lora_B[layer].shape[0]) for m in modules for layer in m.lora_A}
    lora_A, lora_B = {}, {}
    for layer, (d_in, d_out) in sorted(shapes.items()):
        lora_A[layer] = nn.init.kaiming_uniform_(torch.empty(rank, d_in), a=math.sqrt(5), generator=generator)
        lora_B[layer] = torch.zeros(d_out, rank)
    first = modules[0]
    return DomainModule(NEW_BLOCK, first.path, {**first.adapter_config, "r": rank, "lora_alpha": first.scaling * rank}, None,
                        lora_A, lora_B, {}, first.scaling)


def bridged_layers(model: nn.Module) -> dict[str, BridgedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BridgedLinear)}


@torch.no_grad()
def bridge_usage(model: nn.Module) -> dict:
    """How much each domain's subspace feeds each bridged layer.

    For layer l and domain j: the Frobenius norm of B_cat diag(s) P[:, j] A_j, the part of the
    layer's weight update that reads domain j's subspace. Returns
    ``{"domains": [...], "layers": [...], "norms": [[one per domain] per layer]}``.
    """
    layers, maps = bridged_layers(model), update_maps(model)
    domains = list(dict.fromkeys(name for m in layers.values() for name, _ in m.blocks))
    norms = []
    for layer, m in layers.items():
        left = maps[layer]  # (d_out, Σr)
        A = m.lora_A.detach().double()
        row, start = [0.0] * len(domains), 0
        for name, rank in m.blocks:
            M, A_j = left[:, start : start + rank], A[start : start + rank]
            row[domains.index(name)] = float(((M @ (A_j @ A_j.T)) * M).sum().clamp_min(0).sqrt())  # ‖M A_j‖_F
            start += rank
        norms.append(row)
    return {"domains": domains, "layers": list(layers), "norms": norms}


USAGE_EXAMPLES = 128  # task examples the input-weighted usage reads: enough for shares stable to ~0.01, one short pass


def update_maps(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every bridged layer's M = B_cat diag(s) P (d_out x Σr), keyed by layer: its update is M A_cat x."""
    return {name: ((m.lora_B * m.scales) @ m.P).detach().double().clone() for name, m in bridged_layers(model).items()}


@torch.no_grad()
def bridge_input_usage(model: nn.Module, maps: dict[str, dict[str, torch.Tensor]], rows: list[list[int]], pad_id: int,
                       batch_size: int, device) -> dict:
    """How much each domain's part of the update moves each bridged layer's output on the task's own inputs.

    :func:`bridge_usage` weighs every input direction alike; a task's activations are not isotropic, and a domain
    module's A was trained on its corpus's activations, so the update a task draws from domain j is M_j A_j x on
    the task's x. For each ``maps`` entry (name -> ``update_maps`` at some point of training) and each layer: the
    root mean square over the real (unpadded) tokens of ``rows`` of ||M[:, j] A_j x||, one per domain. The model
    runs as it is (its trained P and B_cat), so every map sees the same inputs; with several maps, they differ
    only in which update reads them. Returns ``{"examples", "tokens", "norms": {name: [[per domain] per layer]}}``.
    """
    from domix.engine.predict import length_batches
    from domix.tasks import pad_batch

    layers = bridged_layers(model)
    sums = {key: {name: torch.zeros(len(m.blocks), dtype=torch.float64) for name, m in layers.items()} for key in maps}
    # per domain j, ||M_j u_j||^2 = u_j^T (M_j^T M_j) u_j: an r_j x r_j Gram matrix instead of a d_out-wide product per token
    grams = {key: {name: [] for name in layers} for key in maps}
    for key, per_layer in maps.items():
        for name, m in layers.items():
            start = 0
            for _, rank in m.blocks:
                M_j = per_layer[name][:, start : start + rank]
                grams[key][name].append((start, rank, M_j.t() @ M_j))
                start += rank
    mask: list[torch.Tensor] = []

    def hook(name):
        def read(module, inputs):
            x = inputs[0]
            u = (x.to(module.lora_A.dtype) @ module.lora_A.t()).double()[mask[0]]  # real tokens only
            for key in maps:
                for j, (start, rank, gram) in enumerate(grams[key][name]):
                    u_j = u[:, start : start + rank]
                    sums[key][name][j] += ((u_j @ gram.to(u.device)) * u_j).sum().cpu()
        return read

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for indices in length_batches([len(r) for r in rows], batch_size):
            batch = {k: v.to(device) for k, v in pad_batch([rows[i] for i in indices], pad_id).items()}
            mask[:] = [batch["attention_mask"].bool()]
            tokens += int(mask[0].sum())
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    norms = {key: [(per_layer[name] / max(tokens, 1)).clamp_min(0).sqrt().tolist() for name in layers] for key, per_layer in sums.items()}
    return {"examples": len(rows), "tokens": tokens, "norms": norms}


@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """Fold every bridged layer into its weight, W' = W + B_cat diag(s) P A_cat, in place.

    The result is the plain model class again (no domix layers), ready for save_pretrained.
    """
    for name, layer in bridged_layers(model).items():
        base = layer.base_layer
        base.weight.add_(layer.delta_weight().to(base.weight.dtype))
        set_submodule(model, name, base)
    return model
