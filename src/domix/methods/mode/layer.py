"""The MoDE block: the backbone's consecutive layers beside each domain's expert layers, mixed per token.

``y = a_bb · f_bb(x) + Σ_j a_j · f_j(x)`` with ``(a_bb, a_1..a_N) = softmax(gate(x))``, one linear gate
over the block's input. The model's own forward still walks its layer list, and each slot of the block
does its layer's share: the first slot (the :class:`ExpertBlock`) reads the block's input and the gate,
each slot (the others are :class:`BlockSlot`) runs its backbone layer and the experts' copies of that
layer with the arguments the model passes that layer (its own attention mask: Gemma-2 alternates
sliding-window and global attention; its rotary embeddings, its cache), and the last slot mixes.

Caching: an expert layer is a copy of a backbone layer, renumbered (``layer_idx`` from the model's
number of layers on, see ``model.add_domain``) so that it keeps its own key/value entries in the
model's cache; the first slot adds those entries to a cache that lacks them. Beam search's reordering,
cropping and batch selection then move the experts' entries with the backbone's.
Layers that return a tuple (older transformers) are handled as well as those returning a tensor.
"""

from __future__ import annotations

import copy
import threading
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


class ExpertBlock(nn.Module):
    """A block of backbone layers, the domains' expert layers and the gate that mixes them per token."""

    def __init__(self, name: str, backbone: list[nn.Module], hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.name = name  # e.g. "model.layers.0-5", for records
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
        # the experts' cache entries: index -> the backbone layer it copies (one dict shared by the model's blocks)
        self.cache_sources: dict[int, int] = {}
        self._passes: dict[int, dict[str, Any]] = {}  # a forward's state between the block's slots, per thread

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
        return self.step(0, hidden_states, args, kwargs)

    def step(self, position: int, hidden_states: torch.Tensor, args: tuple, kwargs: dict):
        """The slot at ``position`` of the block: its backbone layer, the experts' copies of that layer,
        with this slot's arguments; the block's input and gate at the first, the mix at the last."""
        device, last, thread = hidden_states.device, len(self.backbone) - 1, threading.get_ident()
        if position == 0:
            self._reserve_expert_cache(args, kwargs)
            logits = self.gate(hidden_states)
            weights = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (batch, seq, 1 + N)
            if self.recording:
                self._record(weights)
            self._passes[thread] = {"input": hidden_states, "weights": weights, "experts": {}, "position": 0}
        current = self._passes.get(thread)
        if current is None or current["position"] != position - (position > 0):
            self._passes.pop(thread, None)
            raise DomixError(f"MoDE block {self.name} ran its layer {position} without the one before it (a model that skips "
                             "layers, such as LayerDrop, cannot hold MoDE blocks); turn the skipping off")
        current["position"] = position
        state = current["experts"]
        # the experts first: on another device they run while the backbone does
        for domain, layers in self.experts.items():
            first = len(self.backbone) - len(layers)  # an expert copies the block's last layers and reads its input
            if position < first:
                continue
            x = current["input"] if position == first else state[domain]
            where = _device_of(layers)
            layer = layers[position - first]
            if where == device:
                state[domain] = hidden_of(layer(x, *args, **kwargs))
            else:
                state[domain] = hidden_of(layer(to_device(x, where), *to_device(args, where), **to_device(kwargs, where)))
        out = self.backbone[position](hidden_states, *args, **kwargs)
        self.returns_tuple = isinstance(out, tuple)
        if position < last:
            return out
        weights = self._passes.pop(thread)["weights"]
        backbone_out = hidden_of(out)
        mixed = weights[..., :1].to(backbone_out.dtype) * backbone_out
        for j, domain in enumerate(self.experts, start=1):
            mixed = mixed + weights[..., j : j + 1].to(backbone_out.dtype) * state[domain].to(device, non_blocking=True)
        return (mixed,) if self.returns_tuple else mixed

    def _reserve_expert_cache(self, args: tuple, kwargs: dict) -> None:
        """Give a cache built for the backbone's layers (a fixed list of them) the experts' entries, each of
        its backbone layer's kind (sliding window or full), before any of the block's layers writes."""
        for cache in (*args, *kwargs.values()):
            if not _is_cache(cache) or getattr(cache, "layer_class_to_replicate", None) is not None:
                continue  # a cache that adds a layer when a new index writes needs nothing
            for index in sorted(self.cache_sources):
                if index < len(cache.layers):
                    continue
                if index != len(cache.layers):
                    raise DomixError(f"this cache has {len(cache.layers)} layers where the model's MoDE experts expect the "
                                     f"backbone's {min(self.cache_sources)}; generate with a cache the model builds")
                source = cache.layers[self.cache_sources[index]]
                if getattr(source, "is_initialized", False) and source.get_seq_length() > 0:
                    raise DomixError(f"this cache already holds keys for layer {self.cache_sources[index]}, but not for the MoDE "
                                     "experts that copy it; generate with a cache the model builds from the start")
                entry = copy.deepcopy(source)  # the same kind of entry (sliding window or full) ...
                entry.keys = entry.values = None  # ... empty, allocated where the expert's first keys are
                entry.is_initialized = False
                cache.layers.append(entry)

    @torch.no_grad()
    def _record(self, weights: torch.Tensor) -> None:
        mask = self.token_mask
        if mask is None or mask.shape != weights.shape[:2]:
            mask = torch.ones(weights.shape[:2], device=weights.device)
        mask = mask.to(weights.device, torch.float64)
        total = (weights.double() * mask[..., None]).sum(dim=(0, 1)).cpu()
        self.gate_sum = total if self.gate_sum is None else self.gate_sum + total
        self.gate_count += int(mask.sum())


class BlockSlot(nn.Module):
    """A slot of the block after its first: runs the block's share for its layer (see :meth:`ExpertBlock.step`)."""

    def __init__(self, block: ExpertBlock, position: int, layer: int):
        super().__init__()
        self.position = position  # within the block
        self.layer = layer  # the backbone layer this slot held
        object.__setattr__(self, "_block", block)  # not a submodule: the block's weights belong to its own slot

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self._block.step(self.position, hidden_states, args, kwargs)


def _device_of(layers: nn.Module) -> torch.device:
    param = next(layers.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
