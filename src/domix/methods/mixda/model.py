"""Putting MixDA's layers into a model, and reading and writing what they learned.

Stage 1 writes one folder per domain: ``mixda_adapter.safetensors`` (key ``<block>.<down|up>.<weight|bias>``,
block = the index in the model's stack of transformer blocks) and ``domix_manifest.json``. Keys by
block index, not by module path, so the adapters fit the base under any head (masked LM, causal LM,
classification). Stage 2 loads them frozen into a :class:`MixtureOfAdapters` per adapted block.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from domix import atomic
from domix.base_model import find_blocks, set_submodule
from domix.engine.predict import predict
from domix.errors import DomixError
from domix.methods.mixda.config import KIND, REDUCTION, WEIGHTS_FILE, bottleneck, choose_layers
from domix.methods.mixda.layer import BottleneckAdapter, DomainAdapterLinear, MaskContext, MixtureOfAdapters, Segments, adapter_dtype
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


def new_adapters(sites: list[Site], reduction: int, seed: int, dtype: torch.dtype) -> list[BottleneckAdapter]:
    """A domain's initial adapters, one per site, from ``seed`` (the domain's own: engine.loop.domain_seed)."""
    torch.manual_seed(seed)
    return [BottleneckAdapter(s.linear.in_features, s.linear.out_features, bottleneck(s.linear.in_features, reduction), dtype)
            .to(s.linear.weight.device) for s in sites]


# ---- stage 1 -------------------------------------------------------------------------------------

def install_domain_adapters(model: nn.Module, sites: list[Site], per_domain: list[list[BottleneckAdapter]]
                            ) -> tuple[Segments, list[DomainAdapterLinear]]:
    """Wrap each site's W2 with every domain's adapter (``per_domain[k][i]``: domain k, site i)."""
    segments = Segments()
    layers = []
    for i, site in enumerate(sites):
        layer = DomainAdapterLinear(site.linear, [adapters[i] for adapters in per_domain], segments)
        set_submodule(model, site.name, layer)
        layers.append(layer)
    return segments, layers


def uninstall(model: nn.Module, sites: list[Site]) -> None:
    for site in sites:
        set_submodule(model, site.name, site.linear)


def adapter_tensors(sites: list[Site], adapters: list[BottleneckAdapter]) -> dict[str, torch.Tensor]:
    return {f"{site.index}.{key}": value.detach().cpu().contiguous().clone()
            for site, adapter in zip(sites, adapters) for key, value in adapter.state_dict().items()}


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
        prefix = f"{index}."
        return {k.removeprefix(prefix): v for k, v in self.tensors.items() if k.startswith(prefix)}


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


# ---- stage 2 -------------------------------------------------------------------------------------

def build_mixda(model: nn.Module, head: list[str], adapters: list[DomainAdapters], cfg) -> list[dict]:
    """Put a gated mixture of the stored adapters (frozen) and a task adapter into every adapted block
    of a classification ``model``, in place; returns the optimizer's parameter groups.

    Trained: the gates, the task adapters and the head. Everything else is frozen.
    """
    settings = adapters[0].manifest["mixda"]
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # gates and task adapters
    install_mixture(model, settings["layers"], len(adapters), settings["reduction"])
    with torch.no_grad():
        for i, layer in mixture_layers(model).items():
            for k, stored in enumerate(adapters):
                _copy_state(layer.adapters[k].state_dict(), stored.state(settings["layers"][i]),
                            f"the MixDA adapters of {stored.name!r} do not fit this model's layers; they belong to another base model")
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)
    trainable = [p for layer in mixture_layers(model).values() for p in (*layer.gate.parameters(), *layer.task_adapter.parameters())]
    return [{"params": trainable + [params[n] for n in head], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]


def install_mixture(model: nn.Module, layers: list[int], n_domains: int, reduction: int) -> list[Site]:
    """Wrap the given blocks' W2 with a :class:`MixtureOfAdapters` of ``n_domains`` (zero) adapters, and
    hook the backbone so the gates see the attention mask (whoever calls the backbone)."""
    sites = adapter_sites(model, layers)
    dtype = adapter_dtype(next(model.parameters()).dtype)
    context = MaskContext()
    backbone = model.base_model
    backbone.register_forward_pre_hook(context.hook, with_kwargs=True)
    for site in sites:
        w = widths(site, reduction)
        device = site.linear.weight.device
        domain = [BottleneckAdapter(w["d_ff"], w["d_model"], w["adapter"], dtype) for _ in range(n_domains)]
        layer = MixtureOfAdapters(site.linear, domain, context, gate_width=w["adapter"],
                                  task_width=bottleneck(w["d_model"], REDUCTION), dtype=dtype).to(device)
        set_submodule(model, site.name, layer)
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


def mixda_settings(adapters: list[DomainAdapters]) -> dict:
    """What a stage-2 record keeps to rebuild the model: domains, blocks, reduction."""
    settings = adapters[0].manifest["mixda"]
    return {"domains": [a.name for a in adapters], "layers": settings["layers"], "reduction": settings["reduction"],
            "task_reduction": REDUCTION}


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
    settings = record["mixda"]
    install_mixture(model, settings["layers"], len(settings["domains"]), settings["reduction"])
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
        "mixda": mixda_settings(adapters),
        "bridge_usage": None,
        "gate_weights": gate_weights,
    }
