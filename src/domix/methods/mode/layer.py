"""The MoDE block: the backbone's consecutive layers beside each domain's expert layers, mixed per token.

``y = a_bb · f_bb(x) + Σ_j a_j · f_j(x)`` with ``(a_bb, a_1..a_N) = softmax(gate(x))``, one linear gate
over the block's input. The model's own forward still walks its layer list: the block's first slot
holds the :class:`ExpertBlock` (it runs the whole block, with the keyword arguments the model passes
its layers: attention mask, rotary position embeddings, ...), the other slots a :class:`PassThrough`.
Layers that return a tuple (older transformers) are handled as well as those returning a tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transformers.cache_utils import Cache

from domix.errors import DomixError

BACKBONE = "backbone"  # the gate's label of the backbone branch (its output 0)


def _is_cache(value: Any) -> bool:
    """A key/value cache object, found by its type rather than by the keyword the model's layer loop
    happens to use for it (``past_key_value`` in older transformers, ``past_key_values``, ``cache`` since 5.x)."""
    return isinstance(value, Cache)


def _without_caches(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The layer inputs an expert copy gets: every cache replaced by None and ``use_cache`` off.

    An expert layer is a copy of a backbone layer and keeps its layer index, so handed the model's cache
    it would write its keys and values into the backbone layer's slot (the attention then sees twice the
    keys). Experts keep no cache at all; only the backbone's layers fill the model's cache."""
    args = tuple(None if _is_cache(a) else a for a in args)
    kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def hidden_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors (also inside tuples, lists and dicts) moved to ``device``; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def _run_layers(layers: nn.ModuleList, hidden: torch.Tensor, args: tuple, kwargs: dict) -> tuple[torch.Tensor, bool]:
    """The layers applied in turn, as the model's loop would; (hidden states, whether they returned tuples)."""
    as_tuple = False
    for layer in layers:
        out = layer(hidden, *args, **kwargs)
        as_tuple = isinstance(out, tuple)
        hidden = hidden_of(out)
    return hidden, as_tuple


class ExpertBlock(nn.Module):
    """A block of backbone layers, the domains' expert layers and the gate that mixes them per token."""

    def __init__(self, name: str, first_layer: int, backbone: list[nn.Module], hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.name = name  # e.g. "model.layers.0-5", for records
        self.first_layer = first_layer  # the backbone index of the block's first layer
        self.backbone = nn.ModuleList(backbone)
        self.experts = nn.ModuleDict()  # domain -> its layers
        self.gate = nn.Linear(hidden_size, 1, dtype=dtype, device=_device_of(self.backbone))
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.returns_tuple = False  # what the backbone layers return: the pass-throughs answer in kind
        # gate statistics over real tokens (see domix.methods.mode.model.recording_gates)
        self.recording = False
        self.token_mask: torch.Tensor | None = None  # (batch, seq) 1 for real tokens, set by a hook on the backbone
        self.gate_sum: torch.Tensor | None = None
        self.gate_count = 0

    @property
    def domains(self) -> list[str]:
        return list(self.experts)

    @property
    def labels(self) -> list[str]:
        """What the gate's outputs weigh, in order: the backbone, then the domains."""
        return [BACKBONE] + self.domains

    def add_expert(self, domain: str, layers: list[nn.Module]) -> None:
        """Add ``domain``'s layers and widen the gate by one output, initialised at zero (see
        ``model.init_stage1_gates`` and ``model.init_stage2_gates`` for how the stages start their gates)."""
        if domain in self.experts:
            raise DomixError(f"block {self.name} already has an expert for domain {domain!r}")
        self.experts[domain] = nn.ModuleList(layers)
        old = self.gate
        gate = nn.Linear(old.in_features, old.out_features + 1, dtype=old.weight.dtype, device=old.weight.device)
        with torch.no_grad():
            gate.weight.zero_()
            gate.bias.zero_()
            gate.weight[: old.out_features] = old.weight
            gate.bias[: old.out_features] = old.bias
        gate.requires_grad_(old.weight.requires_grad)
        self.gate = gate

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        _refuse_cached_decoding(args, kwargs, self.first_layer)
        device = hidden_states.device
        # the experts first: on another device they run while the backbone does
        expert_args, expert_kwargs = _without_caches(args, kwargs)
        outputs = []
        for layers in self.experts.values():
            where = _device_of(layers)
            if where == device:
                out, _ = _run_layers(layers, hidden_states, expert_args, expert_kwargs)
            else:
                out, _ = _run_layers(layers, to_device(hidden_states, where), to_device(expert_args, where),
                                     to_device(expert_kwargs, where))
            outputs.append(out)
        backbone_out, self.returns_tuple = _run_layers(self.backbone, hidden_states, args, kwargs)
        logits = self.gate(hidden_states)
        weights = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (batch, seq, 1 + N)
        if self.recording:
            self._record(weights)
        mixed = weights[..., :1].to(backbone_out.dtype) * backbone_out
        for j, out in enumerate(outputs, start=1):
            mixed = mixed + weights[..., j : j + 1].to(out.dtype) * out.to(device, non_blocking=True)
        return (mixed,) if self.returns_tuple else mixed

    @torch.no_grad()
    def _record(self, weights: torch.Tensor) -> None:
        mask = self.token_mask
        if mask is None or mask.shape != weights.shape[:2]:
            mask = torch.ones(weights.shape[:2], device=weights.device)
        mask = mask.to(weights.device, torch.float64)
        total = (weights.double() * mask[..., None]).sum(dim=(0, 1)).cpu()
        self.gate_sum = total if self.gate_sum is None else self.gate_sum + total
        self.gate_count += int(mask.sum())


class PassThrough(nn.Module):
    """Stands in a layer slot whose layer an :class:`ExpertBlock` already ran: hands the states on."""

    def __init__(self, block: ExpertBlock, layer: int):
        super().__init__()
        self.layer = layer  # the backbone layer this slot held
        object.__setattr__(self, "_block", block)  # not a submodule: the block's weights belong to its own slot

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (hidden_states,) if self._block.returns_tuple else hidden_states


def _device_of(layers: nn.Module) -> torch.device:
    param = next(layers.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _refuse_cached_decoding(args: tuple, kwargs: dict, layer: int) -> None:
    for cache in (*args, *kwargs.values()):
        if _is_cache(cache) and cache.get_seq_length(layer) > 0:
            raise DomixError("MoDE expert layers keep no key/value cache, so they cannot continue a cached generation; "
                             "generate with use_cache=False")
