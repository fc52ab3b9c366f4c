"""Putting MixDA's layers into a model, and reading and writing what they learned.

Stage 1 writes one folder per domain: ``mixda_adapter.safetensors`` (keys ``<block>.<down|up>.<weight|bias>``
for the adapter and ``<block>.gate.net.<0|2>.<weight|bias>`` for its two-way gate, block = the index in the
model's stack of transformer blocks) and ``domix_manifest.json``. Stores written before the gate have
adapters only; stage 2 then starts a fresh gate. Keys by
block index, not by module path, so the adapters fit the base under any head (masked LM, causal LM,
classification). Stage 2 loads them frozen into a :class:`MixtureOfAdapters` per adapted block.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from domix import atomic
from domix.base_model import find_blocks, set_submodule
from domix.engine.predict import predict
from domix.errors import DomixError
from domix.methods.mixda.config import KIND, REDUCTION, WEIGHTS_FILE, bottleneck, choose_layers
from domix.methods.mixda.layer import (BottleneckAdapter, DomainAdapterLinear, Gate, MaskContext, MixtureOfAdapters, Segments,
                                       adapter_dtype, combine_gates)
from domix.store import MANIFEST_NAME, StoredDomain, domain_folders


@dataclass
class Site:
    """Where an adapter goes: block ``index``'s FFN output projection, ``name`` in the model."""

    index: int
    name: str
    linear: nn.Linear


def ffn_output_path(block: nn.Module, config) -> str:
    """The FFN output projection inside a block: its one Linear whose input is the FFN's width."""
    d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    found = [n for n, m in block.named_modules() if isinstance(m, nn.Linear) and m.in_features == d_ff]
    if d_ff is None or len(found) != 1:
        raise DomixError(f"MixDA needs each block's FFN output projection (a linear layer from the FFN width to the model "
                         f"width); this {config.model_type} model's blocks have {len(found)} linear layers of input width "
                         f"{d_ff}, so MixDA does not support it")
    return found[0]


def adapter_sites(model: nn.Module, layers: list[int] | None) -> list[Site]:
    """The adapted blocks of ``model`` (``layers`` or the default two), in order."""
    prefix, blocks = find_blocks(model)
    path = ffn_output_path(blocks[0], model.config)
    return [Site(i, f"{prefix}.{i}.{path}", blocks[i].get_submodule(path)) for i in choose_layers(len(blocks), layers)]


def widths(site: Site, reduction: int) -> dict[str, int]:
    d_ff, d_model = site.linear.in_features, site.linear.out_features
    return {"d_ff": d_ff, "d_model": d_model, "adapter": bottleneck(d_ff, reduction)}


def new_adapters(sites: list[Site], reduction: int, seed: int, dtype: torch.dtype) -> tuple[list[BottleneckAdapter], list[Gate]]:
    """A domain's initial adapters and two-way gates, one per site, from ``seed`` (the domain's own:
    engine.loop.domain_seed). The gates start even (zero output layer): g_1 = g_2 = 1/2."""
    torch.manual_seed(seed)
    adapters, gates = [], []
    for s in sites:
        d_ff, width = s.linear.in_features, bottleneck(s.linear.in_features, reduction)
        adapters.append(BottleneckAdapter(d_ff, s.linear.out_features, width, dtype).to(s.linear.weight.device))
        gates.append(Gate(d_ff, width, 2, dtype, zero_output=True).to(s.linear.weight.device))
    return adapters, gates


def gate_context(model: nn.Module, causal: bool) -> MaskContext:
    """The gates' pooling, fed the attention mask by a hook on the backbone (whoever calls it)."""
    context = MaskContext(causal)
    context.handle = model.base_model.register_forward_pre_hook(context.hook, with_kwargs=True)
    return context


# ---- stage 1 -------------------------------------------------------------------------------------

def install_domain_adapters(model: nn.Module, sites: list[Site], per_domain: list[tuple[list[BottleneckAdapter], list[Gate]]],
                            causal: bool) -> tuple[Segments, list[DomainAdapterLinear]]:
    """Wrap each site's W2 with every domain's adapter and gate (``per_domain[k]``: domain k's, one per site)."""
    segments = Segments()
    context = gate_context(model, causal)
    layers = []
    for i, site in enumerate(sites):
        layer = DomainAdapterLinear(site.linear, [adapters[i] for adapters, _ in per_domain], [gates[i] for _, gates in per_domain],
                                    segments, context)
        set_submodule(model, site.name, layer)
        layers.append(layer)
    return segments, layers


def uninstall(model: nn.Module, sites: list[Site]) -> None:
    """The plain W2 back in every site, and the gates' mask hook off the backbone."""
    contexts = {id(c): c for site in sites if (c := getattr(model.get_submodule(site.name), "context", None)) is not None}
    for context in contexts.values():
        context.handle.remove()
    for site in sites:
        set_submodule(model, site.name, site.linear)


def adapter_tensors(sites: list[Site], adapters: list[BottleneckAdapter], gates: list[Gate]) -> dict[str, torch.Tensor]:
    tensors = {}
    for site, adapter, gate in zip(sites, adapters, gates):
        for prefix, module in ((f"{site.index}.", adapter), (f"{site.index}.gate.", gate)):
            tensors.update({prefix + key: value.detach().cpu().contiguous().clone() for key, value in module.state_dict().items()})
    return tensors


def write_domain(folder: Path, tensors: dict[str, torch.Tensor], manifest: dict) -> None:
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic.write_json(tmp / MANIFEST_NAME, manifest)

    atomic.replace_dir(folder, fill)


class DomainAdapters(StoredDomain):
    """One domain's stage-1 adapters, as stored."""

    @property
    def layers(self) -> list[int]:
        return self.manifest["mixda"]["layers"]

    def state(self, index: int) -> dict[str, torch.Tensor]:
        """The adapter of block ``index``."""
        prefix = f"{index}."
        return {k.removeprefix(prefix): v for k, v in self.tensors.items() if k.startswith(prefix) and not k.startswith(prefix + "gate.")}

    def gate_state(self, index: int) -> dict[str, torch.Tensor] | None:
        """The two-way gate of block ``index``; None in a store written before stage 1 had gates."""
        prefix = f"{index}.gate."
        return {k.removeprefix(prefix): v for k, v in self.tensors.items() if k.startswith(prefix)} or None


def load_adapters(store: str | Path, domains: list[str] | None = None) -> list[DomainAdapters]:
    """The domain adapters of a ``domix pretrain --method mixda`` store (all, or ``domains`` in that order)."""
    from safetensors.torch import load_file

    loaded = [DomainAdapters(f.name, f, atomic.read_json(f / MANIFEST_NAME), load_file(str(f / WEIGHTS_FILE)))
              for f in domain_folders(store, domains, "MixDA domain adapters", method="mixda", kind=KIND)]
    first = loaded[0].manifest["mixda"]
    for a in loaded[1:]:
        if a.manifest["mixda"] != first or a.base_fingerprint != loaded[0].base_fingerprint:
            raise DomixError(f"the adapters of {a.name!r} and {loaded[0].name!r} differ in base model, layers or width; "
                             "compose adapters of one domix pretrain --method mixda run")
    return loaded


@contextmanager
def stage1_model(model: nn.Module, folder: str | Path) -> Iterator[nn.Module]:
    """``model`` (the base language model) with one domain's stage-1 adapters and two-way gates as trained, for
    scoring text; taken out again on exit. ``folder``: the domain's folder of a ``domix pretrain --method mixda`` store."""
    folder = Path(folder)
    (stored,) = load_adapters(folder.parent, [folder.name])
    sites = adapter_sites(model, stored.layers)
    with torch.random.fork_rng(devices=[]):  # shapes only: the stored tensors replace the draw, the caller's RNG stays
        adapters, gates = new_adapters(sites, stored.manifest["mixda"]["reduction"], 0, adapter_dtype(next(model.parameters()).dtype))
    for site, adapter, gate in zip(sites, adapters, gates):
        gate_state = stored.gate_state(site.index)
        if gate_state is None:
            raise DomixError(f"{folder} was written before MixDA's stage 1 had gates; pre-train the domain again")
        mismatch = f"{folder} holds tensors for block {site.index} that this model's adapters do not have; it belongs to another base model"
        _copy_state(adapter.state_dict(), stored.state(site.index), mismatch)
        _copy_state(gate.state_dict(), gate_state, mismatch)
    segments, _ = install_domain_adapters(model, sites, [(adapters, gates)], causal=stored.manifest["mixda"]["gate_pooling"] == "causal")
    segments.only(0)
    try:
        yield model
    finally:
        uninstall(model, sites)


# ---- stage 2 -------------------------------------------------------------------------------------

def build_mixda(model: nn.Module, head: list[str], adapters: list[DomainAdapters], cfg) -> list[dict]:
    """Put a gated mixture of the stored adapters (frozen) and a task adapter into every adapted block
    of a classification ``model``, in place; returns the optimizer's parameter groups.

    Trained: the gates, the task adapters and the head. Everything else is frozen. The gates start as the
    stage-1 gates combined (``layer.combine_gates``); a store written before stage 1 had gates gets fresh ones.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    settings = mixda_settings(adapters, model)
    torch.manual_seed(cfg.seed)  # task adapters (and fresh gates)
    install_mixture(model, settings)
    mismatch = "the MixDA adapters of {!r} do not fit this model's layers; they belong to another base model"
    with torch.no_grad():
        for i, layer in mixture_layers(model).items():
            for k, stored in enumerate(adapters):
                _copy_state(layer.adapters[k].state_dict(), stored.state(settings["layers"][i]), mismatch.format(stored.name))
            if settings["gate"] == "stage1":
                gates = []
                for stored in adapters:
                    gate = Gate(layer.base_layer.in_features, settings["stage1_gate_width"], 2, layer.task_adapter.up.weight.dtype)
                    _copy_state(gate.state_dict(), stored.gate_state(settings["layers"][i]), mismatch.format(stored.name))
                    gates.append(gate)
                layer.gate.load_state_dict(combine_gates(gates).state_dict())
    if settings["gate"] != "stage1":
        print("domix: these MixDA adapters were stored without their stage-1 gates (an earlier domix); the mixture's gates start fresh")
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)
    trainable = [p for layer in mixture_layers(model).values() for p in (*layer.gate.parameters(), *layer.task_adapter.parameters())]
    return [{"params": trainable + [params[n] for n in head], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]


def install_mixture(model: nn.Module, settings: dict) -> list[Site]:
    """Wrap the blocks ``settings`` names (``mixda_settings``) with a :class:`MixtureOfAdapters` of zero adapters
    and a fresh gate each."""
    sites = adapter_sites(model, settings["layers"])
    dtype = adapter_dtype(next(model.parameters()).dtype)
    context = gate_context(model, settings["pooling"] == "causal")
    n = len(settings["domains"])
    for site in sites:
        w = widths(site, settings["reduction"])
        domain = [BottleneckAdapter(w["d_ff"], w["d_model"], w["adapter"], dtype) for _ in range(n)]
        gate = Gate(w["d_ff"], settings["gate_width"], n + 1, dtype)
        layer = MixtureOfAdapters(site.linear, domain, context, gate, task_width=bottleneck(w["d_model"], REDUCTION), dtype=dtype)
        set_submodule(model, site.name, layer.to(site.linear.weight.device))
    return sites


def mixture_layers(model: nn.Module) -> dict[int, MixtureOfAdapters]:
    """The model's mixture layers by position (0, 1, ...) in block order."""
    return dict(enumerate(m for m in model.modules() if isinstance(m, MixtureOfAdapters)))


def mixture_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, MixtureOfAdapters)]


def _copy_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], mismatch: str) -> None:
    """Copy ``state`` into the tensors of ``own`` (a state dict), refusing other keys or shapes."""
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise DomixError(mismatch)
    for key, value in own.items():
        value.copy_(state[key])


def mixda_settings(adapters: list[DomainAdapters], model: nn.Module) -> dict:
    """What a stage-2 record keeps to rebuild the model: domains, blocks, reduction, the gate's width and
    where it started, and its pooling (a decoder's causal running mean, an encoder's mean)."""
    from domix.base_model import detect_objective

    settings = adapters[0].manifest["mixda"]
    width = bottleneck(settings["d_ff"], settings["reduction"])
    stage1 = all(a.gate_state(settings["layers"][0]) is not None for a in adapters)
    return {"domains": [a.name for a in adapters], "layers": settings["layers"], "reduction": settings["reduction"],
            "task_reduction": REDUCTION, "gate": "stage1" if stage1 else "fresh", "stage1_gate_width": width,
            "gate_width": width * len(adapters) if stage1 else width,
            "pooling": "causal" if detect_objective(model.config) == "clm" else "mean"}


def _legacy_settings(settings: dict) -> dict:
    """A record written before stage 1 had gates: a fresh gate of the adapter's width over the example's mean."""
    if "gate_width" in settings:
        return settings
    return {**settings, "gate": "fresh", "gate_width": None, "pooling": "mean"}


def task_tensors(model: nn.Module, head: list[str]) -> dict[str, torch.Tensor]:
    """Everything a stage-2 model adds to the base: per mixture layer its domain adapters, gate and task
    adapter (not W2, which is the base's), and the head."""
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, MixtureOfAdapters):
            for key, value in module.state_dict().items():
                if not key.startswith("base_layer."):
                    tensors[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()
    params = dict(model.named_parameters())
    for name in head:
        tensors[name] = params[name].detach().cpu().contiguous().clone()
    return tensors


@torch.no_grad()
def load_task_tensors(model: nn.Module, record: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Rebuild a stage-2 model from ``task_tensors``' output and its record (the inverse, exactly)."""
    settings = _legacy_settings(record["mixda"])
    if settings["gate_width"] is None:  # the gate's hidden width, read off its weights
        first = next(v for k, v in tensors.items() if k.endswith(".gate.0.weight"))
        settings["gate_width"] = first.shape[0]
        tensors = {k.replace(".gate.0.", ".gate.net.0.").replace(".gate.2.", ".gate.net.2."): v for k, v in tensors.items()}
    install_mixture(model, settings)
    expected = set()
    for name, module in model.named_modules():
        if isinstance(module, MixtureOfAdapters):
            state = {k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")}
            own = {k: v for k, v in module.state_dict().items() if not k.startswith("base_layer.")}
            _copy_state(own, state, f"the task model's weights for {name} do not fit its record; the folder is damaged")
            expected |= {f"{name}.{k}" for k in own}
    params = dict(model.named_parameters())
    for name in record["head"]:
        params[name].copy_(tensors[name])
    extra = set(tensors) - expected - set(record["head"])
    if extra:
        raise DomixError(f"the task model holds weights {sorted(extra)[:3]} that its record does not place; it is damaged")


@contextmanager
def recording_gates(model: nn.Module, labels: list[str]):
    """While inside, every mixture layer keeps its gate weights; yields a dict that, on exit, holds
    ``{"layers", "labels", "weights"}``: the mean weight per label and layer over the examples seen."""
    named = {n: m for n, m in model.named_modules() if isinstance(m, MixtureOfAdapters)}
    for m in named.values():
        m.log = []
    summary: dict = {}
    try:
        yield summary
        summary.update(layers=list(named), labels=list(labels) + ["ffn"],
                       weights=[torch.cat(m.log).double().mean(0).tolist() if m.log else None for m in named.values()])
    finally:
        for m in named.values():
            m.log = None


def task_record(model: nn.Module, adapters: list[DomainAdapters], cfg, rows, pad_id: int, device) -> dict:
    """What a MixDA run adds to result.json: the adapters, the mixture layers and the test set's mean gate weights."""
    with recording_gates(model, [a.name for a in adapters]) as gate_weights:
        predict(model, rows, pad_id, cfg.batch_size, device)
    return {
        "modules": [{"name": a.name, "path": str(a.path), "base_fingerprint": a.base_fingerprint} for a in adapters],
        "layers": mixture_names(model),
        "mixda": mixda_settings(adapters, model),
        "bridge_usage": None,
        "gate_weights": gate_weights,
    }
