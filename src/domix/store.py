"""The module store: reading domain modules back from a pre-training run's folder.

A domain module is a plain PEFT LoRA adapter (``adapter_config.json`` and
``adapter_model.safetensors``); domix adds ``domix_manifest.json`` beside them. Any PEFT
LoRA adapter without a manifest loads too (its base fingerprint is then unknown).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from domix import atomic
from domix.errors import DomixError
from domix.layout import MODEL_DIR, RUN_FILE
from domix.version import __version__

MANIFEST_NAME = "domix_manifest.json"
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<layer>.+)\.lora_(?P<part>[AB])\.weight$")
_PREFIX = "base_model.model."


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {"domix": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


@dataclass
class DomainModule:
    """One domain's LoRA pairs, keyed by the base model's layer names."""

    name: str
    path: Path
    adapter_config: dict
    manifest: dict | None
    lora_A: dict[str, torch.Tensor]  # layer -> (r, d_in)
    lora_B: dict[str, torch.Tensor]  # layer -> (d_out, r)
    other: dict[str, torch.Tensor]  # trained non-LoRA weights (e.g. an MLM head), by model key
    scaling: float

    @property
    def rank(self) -> int:
        return next(iter(self.lora_A.values())).shape[0]

    @property
    def base_fingerprint(self) -> str | None:
        return (self.manifest or {}).get("base_model", {}).get("fingerprint")

    def delta(self, layer: str) -> torch.Tensor:
        """The module's weight update of ``layer``: s · B A, shaped like the layer's weight."""
        update = self.scaling * (self.lora_B[layer].double() @ self.lora_A[layer].double())
        return update.T if self.adapter_config.get("fan_in_fan_out") else update


@dataclass
class StoredDomain:
    """One domain's folder of a store that is not LoRA modules (MixDA adapters, MoDE experts): its
    manifest and the tensors of its weights file; each method reads its own sections of them."""

    name: str
    path: Path
    manifest: dict
    tensors: dict[str, torch.Tensor]

    @property
    def base_fingerprint(self) -> str | None:
        return self.manifest.get("base_model", {}).get("fingerprint")


def load_module(path: str | Path, name: str | None = None) -> DomainModule:
    """Read a domain module (or any PEFT LoRA adapter) from its folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise DomixError(f"{path} is not a LoRA module: it needs adapter_config.json and adapter_model.safetensors")
    config = atomic.read_json(config_file)
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise DomixError(f"{path} holds a {config.get('peft_type')}{' (DoRA)' if config.get('use_dora') else ''} adapter; domain modules must be plain LoRA adapters")
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        raise DomixError(f"{path} uses per-layer rank or alpha patterns, which domix does not read yet; train it with one rank and alpha")
    try:
        weights = load_file(str(weights_file))
    except (SafetensorError, OSError) as err:  # a truncated file or a corrupt header
        raise DomixError(f"{weights_file} cannot be read ({str(err).splitlines()[0]}); the module is damaged: "
                         "train that domain again or restore the file") from None
    lora_A, lora_B, other = {}, {}, {}
    for key, tensor in weights.items():
        match = _LORA_KEY.match(key)
        if match:
            (lora_A if match["part"] == "A" else lora_B)[match["layer"]] = tensor
        else:
            other[key.removeprefix(_PREFIX)] = tensor
    if not lora_A or set(lora_A) != set(lora_B):
        raise DomixError(f"{weights_file} does not hold matching lora_A/lora_B pairs; the module is damaged")
    r, alpha = config["r"], config["lora_alpha"]
    wrong = sorted(layer for layer in lora_A if lora_A[layer].shape[0] != r or lora_B[layer].shape[1] != r)
    if wrong:  # PEFT refuses such a folder too; composing it would scale by alpha / r with the wrong r
        raise DomixError(f"{config_file} says r={r}, but the weights of {len(wrong)} layer(s) (e.g. {wrong[0]}) have rank "
                         f"{lora_A[wrong[0]].shape[0]}; the module's config and weights do not match: fix r or retrain it")
    targets = config.get("target_modules")
    if targets:  # as PEFT matches them: a regex in full, or a name or its dotted suffix
        covered = ((lambda layer: re.fullmatch(targets, layer) is not None) if isinstance(targets, str)
                   else (lambda layer: any(layer == t or layer.endswith("." + t) for t in targets)))
        stray = sorted(layer for layer in lora_A if not covered(layer))
        if stray:  # PEFT would put no LoRA layer there and drop these weights
            raise DomixError(f"{weights_file} has weights for {len(stray)} layer(s) (e.g. {stray[0]}) that its config's "
                             f"target_modules do not name; the module's config and weights do not match: fix it or retrain it")
    if not alpha > 0:
        raise DomixError(f"{config_file} says lora_alpha={alpha}; it must be positive")
    manifest_file = path / MANIFEST_NAME
    return DomainModule(
        name=name or path.name,
        path=path,
        adapter_config=config,
        manifest=atomic.read_json(manifest_file) if manifest_file.is_file() else None,
        lora_A=lora_A,
        lora_B=lora_B,
        other=other,
        scaling=alpha / (r**0.5) if config.get("use_rslora") else alpha / r,
    )


def domain_folders(path: str | Path, domains: list[str] | None = None, pieces: str = "domain module",
                   method: str | None = None, kind: str | None = None) -> list[Path]:
    """The finished domain folders of a store (all, or ``domains`` in that order): the one reader of every
    method's store, which then loads its own files from each folder.

    ``method``: the store must be the output of ``domix pretrain --method METHOD``; ``kind``: only folders
    whose manifest is of that kind count; ``pieces``: what the method calls them, for messages.
    """
    path = Path(path)
    made_by = "domix pretrain" + (f" --method {method}" if method else "")
    if not path.is_dir():
        raise DomixError(f"store {path} does not exist; give the --out folder of {made_by}")
    run_file = path / "run.json"
    if method is not None and run_file.is_file() and atomic.read_json(run_file).get("method") != method:
        raise DomixError(f"{path} holds a domix pretrain --method {atomic.read_json(run_file).get('method')} run, not {pieces}; "
                         f"give the --out folder of {made_by}")
    kinds = {p.name: atomic.read_json(p / MANIFEST_NAME).get("kind") for p in path.iterdir() if (p / MANIFEST_NAME).is_file()}
    available = sorted(name for name, k in kinds.items() if kind is None or k == kind)
    if not available and kinds:
        raise DomixError(f"{path} holds {sorted(set(kinds.values()))}, not {pieces}; give the --out folder of {made_by}")
    if not available:
        raise DomixError(f"store {path} holds no finished {pieces}; run {made_by} into it first, or let it finish")
    chosen = domains or available
    repeated = sorted({d for d in chosen if chosen.count(d) > 1})
    if repeated:
        raise DomixError(f"--domains names {repeated[0]!r} twice; name each module of store {path} once")
    missing = [d for d in chosen if d not in available]
    if missing:
        raise DomixError(f"store {path} has no domain {missing} ({pieces}); it has {available}")
    return [path / d for d in chosen]


def load_store(path: str | Path, domains: list[str] | None = None) -> list[DomainModule]:
    """The LoRA modules of a store folder (all finished domains, or the named ones, in that order)."""
    return [load_module(folder) for folder in domain_folders(path, domains)]


def _adapter_name(folder: Path) -> str:
    """What the bridge calls an adapter: its folder's name, or where the folder is a domix run's model (instruct's
    OUT/model), the run's: ``--adapter runs/chemprot/model`` composes as "chemprot", not "model"."""
    return folder.parent.name if folder.name == MODEL_DIR and (folder.parent / RUN_FILE).is_file() else folder.name


def gather_modules(modules: str | None, domains: list[str] | None = None, adapters: list[str] | None = None) -> list[DomainModule]:
    """The LoRA modules to compose: a store's (or the named ones), then each adapter folder, in order."""
    found = load_store(modules, domains) if modules else []
    folders = [Path(p).resolve() for p in adapters or []]
    for i, folder in enumerate(folders):
        if folder in folders[:i]:
            raise DomixError(f"--adapter {adapters[i]} is given twice; give each adapter once")
    for path in adapters or []:
        found.append(load_module(path, _adapter_name(Path(path))))
    # two folders may share a name (a/adapter, b/adapter): keep the bridge's blocks apart, numbered by path so that
    # the names (the bridge's layout) do not depend on the order the folders were given in
    by_name: dict[str, list[DomainModule]] = {}
    for m in found:
        by_name.setdefault(m.name, []).append(m)
    for name, same in by_name.items():
        for i, m in enumerate(sorted(same, key=lambda m: str(Path(m.path).resolve()))[1:], start=2):
            m.name = f"{name}#{i}"
    return found


def describe_store(path: str | Path, describers: dict[str, Callable[[dict], str]] | None = None) -> list[str]:
    """A line per finished domain of a store of any method: what it holds, its base, training and held-out loss.
    ``describers``: manifest kind -> what a folder of that kind holds (the registry's, for pieces that are not LoRA
    modules); a LoRA module is described by its rank and layers, anything else by its kind."""
    path = Path(path)
    folders = [p for p in sorted(path.iterdir()) if (p / MANIFEST_NAME).is_file()] if path.is_dir() else []
    if not folders:
        load_store(path)  # raises the store's own error: missing, or nothing finished yet
    lines = []
    for folder in folders:
        m = atomic.read_json(folder / MANIFEST_NAME)
        if m.get("kind") in (describers or {}):
            what = describers[m["kind"]](m)
        elif (folder / "adapter_config.json").is_file():
            module = load_module(folder)
            what = f"LoRA rank {module.rank}, {len(module.lora_A)} layers"
        else:
            what = m.get("kind", "model")
        held, base = m.get("heldout", {}), m.get("base_model", {})
        change = " -> ".join("-" if held.get(k) is None else f"{held[k]:.4f}" for k in ("loss_before", "loss_after"))
        lines.append(f"{folder.name}: {what}, base {base.get('name')} ({base.get('fingerprint')}), "
                     f"{m.get('training', {}).get('steps')} steps, held-out loss {change}")
    return lines


def store_wall_time(manifests: list[dict]) -> float | None:
    """A store's pre-training wall time from its pieces' manifests (None if one lacks it): fused domains start together,
    so the run took as long as its last domain; domains trained one after another add up."""
    walls = [m.get("wall_time_s") for m in manifests]
    if not walls or None in walls:
        return None
    fused = any((m.get("training") or {}).get("fused_with") for m in manifests)
    return round(max(walls) if fused else sum(walls), 2)


def check_base(pieces: list, fingerprint: str, what: str = "domain module") -> None:
    """Refuse pieces trained on a base other than the one with ``fingerprint``.

    A piece is anything with ``name``, ``manifest`` and ``base_fingerprint``: a LoRA domain module,
    MixDA's adapters, MoDE's experts. One without a recorded base (a plain PEFT adapter) passes.
    """
    for piece in pieces:
        if piece.base_fingerprint is not None and piece.base_fingerprint != fingerprint:
            trained_on = piece.manifest["base_model"]["name"]
            raise DomixError(
                f"{what} {piece.name!r} was trained on another base model ({trained_on}, fingerprint "
                f"{piece.base_fingerprint}) than the one given (fingerprint {fingerprint}); use that base model "
                "or retrain it on this one"
            )


SHARED_INIT_COS = 0.9  # |cos| of two domains' A for one layer above which they started alike


@torch.no_grad()
def shared_initialisation(modules: list[DomainModule]) -> str | None:
    """A one-line warning if two of ``modules`` started from the same initial weights, else None.

    Modules seeded alike keep nearly parallel A matrices after a short pre-training (|cos| near 1 in
    most layers, where independent draws give about 1/sqrt(r·d_in)), so a composition of them spans
    one module's subspace instead of one per domain. domix pretrain wrote such stores before it gave
    each domain its own seed.
    """
    for i, first in enumerate(modules):
        for second in modules[i + 1 :]:
            layers = [l for l in first.lora_A if second.lora_A.get(l) is not None and second.lora_A[l].shape == first.lora_A[l].shape]
            close = sum(
                abs(float(torch.nn.functional.cosine_similarity(first.lora_A[l].double().flatten(),
                                                                 second.lora_A[l].double().flatten(), dim=0))) > SHARED_INIT_COS
                for l in layers)
            if layers and close > len(layers) / 2:
                return (f"domix: warning: modules {first.name!r} and {second.name!r} started from the same weights "
                        f"(A at |cos| > {SHARED_INIT_COS} in {close} of {len(layers)} layers), so composing them spans one "
                        "subspace instead of one per domain; retrain them with this domix pretrain, which seeds each domain apart")
    return None


def locate(named: dict[str, nn.Module], layer: str) -> str | None:
    """The name in ``named`` (a model's modules) of a layer a module recorded, across wrappers: a module trained on
    the LM model (``model.layers.0.q_proj``) fits the bare model (``layers.0.q_proj``), a sequence classifier or
    another head on the same backbone, and one trained on a bare model fits a wrapper. None if nothing fits."""
    if layer in named:
        return layer
    parts = layer.split(".")
    for i in range(1, len(parts) - 1):  # without the wrapper's prefix
        if ".".join(parts[i:]) in named:
            return ".".join(parts[i:])
    wrapped = [n for n in named if n.endswith("." + layer)]  # inside a wrapper
    return wrapped[0] if len(wrapped) == 1 else None


@torch.no_grad()
def merge_into(model: nn.Module, module: DomainModule) -> nn.Module:
    """Fold a module into a base model in place: W' = W + s · B A (and its trained head, if any)."""
    named = dict(model.named_modules())
    for layer in module.lora_A:
        found = locate(named, layer)
        if found is None:
            raise DomixError(f"module {module.name!r} adapts layer {layer!r}, which this base model does not have; it was trained on another architecture")
        weight = named[found].weight
        delta = module.delta(layer)
        if delta.shape != weight.shape:
            raise DomixError(f"module {module.name!r} has shape {tuple(delta.shape)} for layer {layer!r}, but the base layer is {tuple(weight.shape)}")
        weight.add_(delta.to(weight.dtype))
    for key, tensor in module.other.items():
        owner_name, _, attr = key.replace(".modules_to_save.default", "").rpartition(".")
        owner = named.get(owner_name)
        if owner is None or not isinstance(getattr(owner, attr, None), nn.Parameter):
            raise DomixError(f"module {module.name!r} holds weight {key!r}, which this base model does not have")
        old = getattr(owner, attr)
        # a new Parameter, not a copy: the head may be tied to the input embeddings
        setattr(owner, attr, nn.Parameter(tensor.to(old.dtype).clone(), requires_grad=old.requires_grad))
    return model


def base_of(pieces: list) -> str:
    """The base model the stored pieces (modules, adapters, experts) were trained on, as their manifest or
    PEFT adapter config names it."""
    for piece in pieces:
        name = ((piece.manifest or {}).get("base_model", {}).get("name")
                or (getattr(piece, "adapter_config", None) or {}).get("base_model_name_or_path"))
        if name:
            return name
    raise DomixError("the modules do not say which base model they were trained on; pass --model")
