"""MoDE in a Hugging Face model: insert the blocks, add domains' experts, place them, save and load them.

Everything lives inside the backbone's own layer list (see :mod:`domix.methods.mode.layer`), so the backbone
stays a language model: put under any head, it runs the gated blocks. Saved tensors are keyed by block
number, never by the model's attribute path, so one store serves an LM and a classifier of the same base.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from domix import atomic
from domix.base_model import find_blocks
from domix.engine.predict import predict
from domix.errors import DomixError
from domix.methods.mode.config import KIND, BlockPlan, check_device_map
from domix.methods.mode.layer import BACKBONE, BlockSlot, ExpertBlock
from domix.store import MANIFEST_NAME, StoredDomain, domain_folders

EXPERTS_FILE = "mode_experts.safetensors"


# --- the blocks in a model ---------------------------------------------------------------------------

def expert_blocks(model: nn.Module) -> list[ExpertBlock]:
    return [m for m in model.modules() if isinstance(m, ExpertBlock)]


def insert_blocks(model: nn.Module, plans: list[BlockPlan]) -> list[ExpertBlock]:
    """Put an (expert-less) :class:`ExpertBlock` in place of each planned block of ``model``'s layers."""
    if expert_blocks(model):
        raise DomixError("this model already has MoDE blocks; remove them first (domix.methods.mode.model.remove_blocks)")
    _, layers = find_blocks(model)
    if plans and plans[-1].layers[-1] >= len(layers):
        raise DomixError(f"the MoDE blocks reach layer {plans[-1].layers[-1]}, but this model has {len(layers)} layers; "
                         "the experts belong to another base model")
    hidden = model.config.hidden_size
    blocks = []
    cache_sources: dict[int, int] = {}  # the experts' cache entries, model-wide (see add_domain)
    for plan in plans:
        first = plan.layers[0]
        original = [layers[i] for i in plan.layers]
        dtype = next(original[0].parameters()).dtype
        block = ExpertBlock(f"layers {first}-{plan.layers[-1]}", original, hidden, dtype)
        block.plan = plan
        block.cache_sources = cache_sources
        layers[first] = block
        for position, i in enumerate(plan.layers[1:], start=1):
            layers[i] = BlockSlot(block, position, i)
        for i in plan.layers:  # a layer loop that reads the slot's attention type (transformers 4.x) finds the layer's
            if hasattr(original[i - first], "attention_type"):
                layers[i].attention_type = original[i - first].attention_type
        blocks.append(block)
    getattr(model, "base_model", model).register_forward_pre_hook(_hand_mask_to_blocks, with_kwargs=True)
    return blocks


def remove_blocks(model: nn.Module) -> None:
    """Put the backbone's own layers back (its weights were never touched)."""
    blocks = expert_blocks(model)
    if not blocks:
        return
    for module in model.modules():  # the hook sits on the backbone, wherever it is now
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _hand_mask_to_blocks:
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
    for _, layers in _layer_lists(model):
        for i, slot in list(enumerate(layers)):
            if isinstance(slot, ExpertBlock):
                for j, layer in enumerate(slot.backbone):
                    layers[i + j] = layer


def _layer_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and any(isinstance(c, ExpertBlock) for c in m)]


def _hand_mask_to_blocks(backbone: nn.Module, args: tuple, kwargs: dict) -> None:
    """A pre-hook on the backbone: its padding mask (batch, seq) goes to the blocks, which count the gate over real tokens.

    It finds the blocks from the module it is called on (no closure), so a deep copy of the model hooks its own blocks.
    """
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    for block in expert_blocks(backbone):
        block.token_mask = mask


def add_domain(model: nn.Module, domain: str) -> None:
    """Give every block an expert for ``domain``: copies of the block's source layers (the plan's).

    Each copy gets a cache index of its own, after the model's layers and the experts added before, so
    that in cached decoding it keeps its own keys and values (the copy's would otherwise overwrite its
    backbone layer's entry)."""
    blocks = expert_blocks(model)
    if not blocks:
        return
    (_, layers), = _layer_lists(model)  # the model's layer list, where the blocks sit
    next_index = len(layers) + len(blocks[0].cache_sources)
    for block in blocks:
        plan: BlockPlan = block.plan
        copies = []
        for i in plan.source_layers:
            layer = copy.deepcopy(block.backbone[i - plan.layers[0]])
            for module in layer.modules():  # the attention's index into the cache
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = next_index
            block.cache_sources[next_index] = i
            next_index += 1
            copies.append(layer)
        block.add_expert(domain, copies)


@torch.no_grad()
def init_stage1_gates(model: nn.Module, backbone_prior: float) -> None:
    """Start every two-way gate at (backbone_prior, 1 - backbone_prior) for every token: weight 0, bias the log-odds.

    Whole-block experts start equal to their block, so any mix is the base and an even one gives the
    expert half the gradient. An expert of fewer layers computes another function at the start, and an
    even mix ruins the base (SmolLM2, 1-layer experts: LM loss 3.9 -> 23); at 0.99 the start is the
    base's (3.93), and AdamW's steps do not shrink with the expert's small share of the gradient.
    """
    for block in expert_blocks(model):
        block.gate.weight.zero_()
        block.gate.bias.copy_(torch.tensor([math.log(backbone_prior / (1 - backbone_prior)), 0.0]))


@torch.no_grad()
def init_stage2_gates(model: nn.Module, experts: list["DomainExperts"]) -> None:
    """Start the (1+N)-way gates from the stage-1 gates: expert j's logit, relative to the backbone's, is
    its stage-1 log-odds minus log N. So a_j / a_bb = (stage-1 a_j / a_bb) / N at every token: each expert
    keeps its learnt preference, and together they take about the share one expert had in stage 1."""
    n = len(experts)
    for block in expert_blocks(model):
        b = block.plan.index
        block.gate.weight.zero_()
        block.gate.bias.zero_()
        for j, e in enumerate(experts, start=1):
            w, bias = e.tensors.get(f"blocks.{b}.gate.weight"), e.tensors.get(f"blocks.{b}.gate.bias")
            if w is None or bias is None or w.shape != (2, block.gate.in_features):
                raise DomixError(f"the expert store {e.path} has no two-way gate of width {block.gate.in_features} for block {b}; "
                                 "it is damaged or belongs to another base model")
            block.gate.weight[j] = (w[1] - w[0]).to(block.gate.weight)
            block.gate.bias[j] = float(bias[1] - bias[0]) - math.log(n)


def set_trainable(model: nn.Module, head: list[str] = (), experts: bool = True) -> None:
    """Freeze the model except the gates, the named head parameters and (if ``experts``) the experts."""
    model.requires_grad_(False)
    for block in expert_blocks(model):
        block.gate.requires_grad_(True)
        block.experts.requires_grad_(experts)
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)


def place(model: nn.Module, device_map: dict[str, str] | None) -> None:
    """Move experts to their devices: ``device_map[domain]``, else ``device_map["experts"]``.

    ``device_map["backbone"]`` (if given) takes the rest of the model. A block moves its input to
    each expert's device and the expert's output back, so backbone and experts are independent
    branches; on separate GPUs the experts' kernels run while the backbone's do.
    """
    if not device_map:
        return
    check_device_map(device_map)
    blocks = expert_blocks(model)
    domains = {d for b in blocks for d in b.domains}
    unknown = sorted(set(device_map) - domains - {"backbone", "experts"})
    if unknown:
        raise DomixError(f"--mode-device-map names {unknown}, which are neither 'backbone', 'experts' nor a domain "
                         f"({sorted(domains)})")
    if "backbone" in device_map:
        model.to(device_map["backbone"])
    for block in blocks:
        for domain, layers in block.experts.items():
            where = device_map.get(domain, device_map.get("experts"))
            if where is not None:
                layers.to(where)


# --- gate statistics ---------------------------------------------------------------------------------

@contextmanager
def recording_gates(model: nn.Module) -> Iterator[list[ExpertBlock]]:
    """Within: every forward adds the gate weights of real (non-padding) tokens to the blocks' sums."""
    blocks = expert_blocks(model)
    for block in blocks:
        block.recording, block.gate_sum, block.gate_count = True, None, 0
    try:
        yield blocks
    finally:
        for block in blocks:
            block.recording = False


def gate_weights(blocks: list[ExpertBlock]) -> dict:
    """{"layers": block names, "labels": domains then "backbone", "weights": per block the mean gate weights}."""
    if not blocks:
        return {"layers": [], "labels": [], "weights": []}
    labels = blocks[0].domains + [BACKBONE]
    weights = []
    for block in blocks:
        if block.gate_sum is None or block.gate_count == 0:
            raise DomixError(f"no gate weights were recorded for block {block.name}; run the model inside recording_gates")
        mean = (block.gate_sum / block.gate_count).tolist()  # backbone first
        weights.append([round(w, 6) for w in mean[1:] + mean[:1]])
    return {"layers": [b.name for b in blocks], "labels": labels, "weights": weights}


# --- tensors ------------------------------------------------------------------------------------------

def block_tensors(model: nn.Module, domains: list[str] | None = None, stage1_key: bool = False) -> dict[str, torch.Tensor]:
    """The experts' and gates' weights, keyed ``blocks.B.experts.DOMAIN.…`` and ``blocks.B.gate.…``.

    ``stage1_key``: one domain's store file, keyed ``blocks.B.expert.…`` (the folder names the domain).
    """
    out = {}
    for block in expert_blocks(model):
        b = block.plan.index
        for domain, layers in block.experts.items():
            if domains is not None and domain not in domains:
                continue
            prefix = f"blocks.{b}.expert." if stage1_key else f"blocks.{b}.experts.{domain}."
            out.update({prefix + k: v.detach().cpu().contiguous() for k, v in layers.state_dict().items()})
        out.update({f"blocks.{b}.gate.{k}": v.detach().cpu().contiguous() for k, v in block.gate.state_dict().items()})
    return out


@torch.no_grad()
def load_block_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], domain_of_stage1: str | None = None,
                       gates: bool = True, where: str = "the task model") -> None:
    """Copy saved experts (and gates) into the model's blocks; every expected tensor must be there, shaped alike."""
    for block in expert_blocks(model):
        b = block.plan.index
        parts = [(f"blocks.{b}.gate.", block.gate)] if gates else []
        for domain, layers in block.experts.items():
            if domain_of_stage1 is None:
                parts.append((f"blocks.{b}.experts.{domain}.", layers))
            elif domain == domain_of_stage1:
                parts.append((f"blocks.{b}.expert.", layers))
        for prefix, module in parts:
            for key, target in module.state_dict().items():
                value = tensors.get(prefix + key)
                if value is None:
                    raise DomixError(f"{where} has no tensor {prefix + key}; it is damaged or was saved with other MoDE settings")
                if value.shape != target.shape:
                    raise DomixError(f"{where} holds {prefix + key} of shape {tuple(value.shape)}, but this model's is "
                                     f"{tuple(target.shape)}; it belongs to another base model")
                target.copy_(value)


# --- the stage-1 store --------------------------------------------------------------------------------

class DomainExperts(StoredDomain):
    """One domain's stage-1 experts, read from its store folder."""

    @property
    def plans(self) -> list[BlockPlan]:
        return [BlockPlan.from_dict(b) for b in self.manifest["mode"]["blocks"]]


def load_expert_store(path: str | Path, domains: list[str] | None = None) -> list[DomainExperts]:
    """The domains' experts of a ``domix pretrain --method mode`` folder (all finished ones, or the named, in that order)."""
    from safetensors.torch import load_file

    out = []
    for folder in domain_folders(path, domains, "MoDE experts", method="mode", kind=KIND):
        if not (folder / EXPERTS_FILE).is_file():
            raise DomixError(f"{folder} has no {EXPERTS_FILE}; the domain's experts are missing, rerun its pre-training")
        out.append(DomainExperts(folder.name, folder, atomic.read_json(folder / MANIFEST_NAME), load_file(str(folder / EXPERTS_FILE))))
    first = out[0]
    for other in out[1:]:
        if other.plans != first.plans:
            raise DomixError(f"domains {first.name!r} and {other.name!r} of {path} have experts in other blocks or of other "
                             "sizes (--mode-block-size, --mode-expert-layers, --mode-blocks); pre-train them with the same settings")
    return out


@contextmanager
def stage1_model(model: nn.Module, folder: str | Path) -> Iterator[nn.Module]:
    """``model`` (the base language model) with one domain's stage-1 experts and two-way gates as trained, for
    scoring text; the blocks come out again on exit. ``folder``: the domain's folder of a ``domix pretrain --method mode`` store."""
    folder = Path(folder)
    (experts,) = load_expert_store(folder.parent, [folder.name])
    insert_blocks(model, experts.plans)
    try:
        add_domain(model, experts.name)
        load_block_tensors(model, experts.tensors, domain_of_stage1=experts.name, where=f"the expert store {folder}")
        yield model
    finally:
        remove_blocks(model)


# --- stage 2 ------------------------------------------------------------------------------------------

def build_task_model(model: nn.Module, head: list[str], experts: list[DomainExperts], cfg) -> list[dict]:
    """Stage 2: every chosen domain's experts in every block, (1+N)-way gates started from the stage-1 gates.

    Gates and head train; experts stay frozen unless ``cfg.mode_train_experts``. Returns the
    optimizer's parameter groups (gates at ``cfg.mode_gate_lr``, default ``cfg.lr``).
    """
    insert_blocks(model, experts[0].plans)
    for e in experts:
        add_domain(model, e.name)
    for e in experts:
        load_block_tensors(model, e.tensors, domain_of_stage1=e.name, gates=False, where=f"the expert store {e.path}")
    init_stage2_gates(model, experts)
    set_trainable(model, head, experts=cfg.method_options.mode_train_experts)
    blocks = expert_blocks(model)
    gates = [p for b in blocks for p in b.gate.parameters()]
    params = dict(model.named_parameters())
    rest = [params[n] for n in head] + ([p for b in blocks for p in b.experts.parameters()] if cfg.method_options.mode_train_experts else [])
    return [{"params": gates, "lr": cfg.method_options.mode_gate_lr or cfg.lr, "weight_decay": 0.0},
            {"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]


def task_record(model: nn.Module, experts: list[DomainExperts], cfg, rows=None, pad_id: int = 0, device=None) -> dict:
    """What a MoDE run adds to result.json: the blocks, the experts used and (given ``rows``, a classifier's
    test set) the mean gate weights."""
    blocks = expert_blocks(model)
    if rows is not None:
        with recording_gates(model) as blocks:
            predict(model, rows, pad_id, cfg.batch_size, device)
    first = experts[0].manifest["mode"]
    return {
        "layers": [b.name for b in blocks],
        "modules": [{"name": e.name, "path": str(e.path), "base_fingerprint": e.base_fingerprint} for e in experts],
        "gate_weights": gate_weights(blocks) if rows is not None else None,
        "bridge_usage": None,
        "mode": {"block_size": first["block_size"], "expert_layers": first["expert_layers"],
                 "blocks": [p.to_dict() for p in experts[0].plans], "domains": [e.name for e in experts],
                 "gate_init": "stage1", "train_experts": cfg.method_options.mode_train_experts, "gate_lr": cfg.method_options.mode_gate_lr or cfg.lr,
                 "device_map": cfg.method_options.mode_device_map},
    }


def rebuild_task_model(model: nn.Module, record: dict, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Rebuild a saved MoDE task model on a fresh classifier of its base: blocks, experts, gates, head."""
    insert_blocks(model, [BlockPlan.from_dict(b) for b in record["mode"]["blocks"]])
    for domain in record["mode"]["domains"]:
        add_domain(model, domain)
    load_block_tensors(model, tensors, where=f"the task model {folder}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in record["head"]:
            params[name].copy_(tensors[name])


def task_tensors(model: nn.Module, head: list[str]) -> dict[str, torch.Tensor]:
    """What a MoDE task model saves: every block's experts and gate, and the head (the backbone is the base's)."""
    params = dict(model.named_parameters())
    return {**block_tensors(model), **{n: params[n].detach().cpu().contiguous() for n in head}}
