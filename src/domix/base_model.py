"""Loading the frozen base model: any Hugging Face name, local folder or GGUF file.

Also answers the questions every method asks of a base: which pre-training objective it
has (masked or causal LM), which layers LoRA targets by default, and a fingerprint of its
weights so modules trained on another base are refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from domix.errors import DomixError

Objective = Literal["mlm", "clm"]

# Elements sampled from each tensor for the fingerprint: enough to tell models apart,
# cheap enough for an 8B model.
_FINGERPRINT_SAMPLES = 4096


@dataclass
class BaseModel:
    """A loaded base model with what domix needs to know about it."""

    name: str  # as the user gave it: hub name, folder or .gguf file
    model: nn.Module
    tokenizer: object
    objective: Objective


def model_source(name: str) -> tuple[str, dict]:
    """Where transformers should look, and the extra arguments (a GGUF file)."""
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise DomixError(f"model file {name} does not exist; give an existing .gguf file")
        return str(path.parent), {"gguf_file": path.name}
    return name, {}


def model_reference(name: str) -> str:
    """How records name a base model: as the user named it (a hub name, or a local folder or file relative to
    where domix ran), never by one machine's absolute path (settings.portable_path), so that records, stores and run
    folders copied to another machine name the same model there. The weights' fingerprint beside the name says
    which model it was."""
    from domix.settings import portable_path

    return portable_path(name)


def load_failed(name: str, err: Exception) -> DomixError:
    if not Path(name).exists():  # the hub's own complaint about the name's form would only confuse
        return DomixError(f"cannot load model {name!r}: there is no such local folder or file, and no Hugging Face model "
                          "of that name in the local cache; give a model folder, a .gguf file or a cached hub name")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DomixError(
        f"cannot load model {name!r} ({first}); give a local model folder, a .gguf file, "
        "or a Hugging Face model name that is already in the local cache"
    )


def detect_objective(config) -> Objective:
    """Masked LM for encoders, causal LM for decoders, read off the model's config."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForMaskedLM"):
            return "mlm"
        if arch.endswith("ForCausalLM"):
            return "clm"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return "mlm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "clm"
    raise DomixError(
        f"model type {config.model_type!r} has neither a masked-LM nor a causal-LM head in transformers; "
        "use an encoder (BERT, RoBERTa, ...) or a decoder (Llama, GPT-2, ...)"
    )


def load_tokenizer(name: str, objective: str = "auto"):
    """The base model's tokenizer and training objective, read without loading the weights."""
    from transformers import AutoConfig, AutoTokenizer

    where, extra = model_source(name)
    try:
        config = AutoConfig.from_pretrained(where, **extra)
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    except (OSError, ValueError, KeyError) as err:
        raise load_failed(name, err) from None
    if objective == "auto":
        objective = detect_objective(config)
    elif objective not in ("mlm", "clm"):
        raise DomixError(f"unknown objective {objective!r}; use mlm, clm or auto")
    if objective == "mlm" and tokenizer.mask_token_id is None:
        raise DomixError(f"the tokenizer of {name!r} has no mask token, so it cannot train a masked LM; use --objective clm")
    return tokenizer, objective


def load_base_model(
    name: str, objective: str = "auto", dtype: torch.dtype = torch.float32, tokenizer=None
) -> BaseModel:
    """Load a base model with its language-model head (and its tokenizer, unless given)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if tokenizer is None:
        tokenizer, objective = load_tokenizer(name, objective)
    elif objective not in ("mlm", "clm"):
        raise ValueError("give the objective that load_tokenizer resolved along with its tokenizer")
    auto_cls = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    where, extra = model_source(name)
    try:
        model = auto_cls.from_pretrained(where, dtype=dtype, **extra)
    except (OSError, ValueError, KeyError) as err:
        raise load_failed(name, err) from None
    model.name_or_path = model_reference(name)  # recorded by PEFT in adapter_config.json
    return BaseModel(name=name, model=model, tokenizer=tokenizer, objective=objective)


def set_gradient_checkpointing(model: nn.Module, enabled: bool, context_fn=None) -> None:
    """Recompute each block's activations in backward instead of keeping them, or stop doing so.

    Non-reentrant, so a frozen embedding layer needs no input gradient; transformers 5 names it
    activation checkpointing, older versions gradient checkpointing. ``context_fn`` is passed on to
    ``torch.utils.checkpoint`` (two context managers: around the forward, around its recomputation).
    """
    new_name = hasattr(model, "activation_checkpointing_enable")
    if not enabled:
        (model.activation_checkpointing_disable if new_name else model.gradient_checkpointing_disable)()
        return
    kwargs = {"use_reentrant": False, **({"context_fn": context_fn} if context_fn is not None else {})}
    if new_name:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def convert_gguf(gguf_file: str, out_dir: str) -> None:
    """De-quantise a GGUF model once into a plain safetensors folder (fast to load later)."""
    from domix.atomic import replace_dir

    if not str(gguf_file).endswith(".gguf"):
        raise DomixError(f"{gguf_file} is not a .gguf file")
    base = load_base_model(gguf_file)
    config = base.model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantised now
    plain = type(base.model)(config)
    plain.load_state_dict(base.model.state_dict())

    source = gguf_provenance(gguf_file)
    source["fingerprint"] = weights_fingerprint(plain)

    def fill(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        base.tokenizer.save_pretrained(tmp)
        from domix.atomic import write_json

        write_json(tmp / SOURCE_FILE, source)

    replace_dir(Path(out_dir), fill)


SOURCE_FILE = "domix_source.json"  # in a converted model folder: the file it came from, its quantisation, its fingerprint


def gguf_provenance(gguf_file: str) -> dict:
    """Where a converted model came from: the GGUF file's name, size and SHA-256, its quantisation (the file's
    general.file_type, as gguf names it) and its own name for the model."""
    import hashlib

    import gguf

    path = Path(gguf_file)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    reader = gguf.GGUFReader(path)

    def field(key: str):
        found = reader.fields.get(key)
        return None if found is None else found.parts[found.data[0]]

    file_type, name = field("general.file_type"), field("general.name")
    quantisation = None
    if file_type is not None:
        try:
            quantisation = gguf.LlamaFileType(int(file_type[0])).name.removeprefix("MOSTLY_")
        except ValueError:
            quantisation = f"file type {int(file_type[0])}"
    return {"gguf_file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest(), "quantisation": quantisation,
            "gguf_name": bytes(name).decode() if name is not None else None,
            "conversion": "domix convert-gguf: de-quantised to the model's own float dtype by transformers' GGUF loader"}


def provenance(model: str) -> str:
    """One line saying what a base model is: its name, and for a converted GGUF file its source file, quantisation
    and fingerprint (from the folder's domix_source.json)."""
    source = Path(model) / SOURCE_FILE
    if not source.is_file():
        return model
    from domix.atomic import read_json

    s = read_json(source)
    return (f"{model}: {s['gguf_file']} ({s['quantisation']} quantisation, sha256 {s['sha256'][:12]}), {s['conversion']}; "
            f"weights fingerprint {s['fingerprint']}")


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of the weights of the model's transformer blocks.

    Only the blocks count, so the same backbone fingerprints alike under any head (masked LM,
    causal LM, classification). Values are rounded to bfloat16 before hashing, so fp32 and
    bf16 copies agree, and each tensor contributes its name, shape and an evenly spaced
    sample of its elements, so the cost stays small for an 8B model.
    """
    _, blocks = find_blocks(model)
    digest = hashlib.sha256()
    for name, param in sorted(blocks.named_parameters(), key=lambda kv: kv[0]):
        flat = param.detach().reshape(-1)
        if flat.numel() > _FINGERPRINT_SAMPLES:
            idx = torch.arange(_FINGERPRINT_SAMPLES, device=flat.device) * (flat.numel() - 1) // (_FINGERPRINT_SAMPLES - 1)
            flat = flat[idx]
        sample = flat.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(param.shape)}:".encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks: its longest ModuleList of same-type modules."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise DomixError("cannot find the transformer blocks of this model; pass --target-modules explicitly")
    return best


def default_target_modules(model: nn.Module) -> str:
    """A PEFT regex for every linear layer inside every transformer block (not heads, not poolers)."""
    prefix, blocks = find_blocks(model)
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in blocks.named_modules() if n and _is_linear(m)})
    if not leaves:
        raise DomixError("the transformer blocks of this model hold no linear layers; pass --target-modules")
    return rf"{re.escape(prefix)}\.\d+\.(?:.*\.)?(?:{'|'.join(map(re.escape, leaves))})"


def resolve_target_modules(model: nn.Module, spec: list[str] | str | None) -> tuple[list[str] | str, list[str]]:
    """Turn the user's choice into PEFT's ``target_modules`` and the full names it matches.

    ``spec`` is None (every linear layer of every block), a list of layer names matched as
    PEFT does (the name or its dotted suffix), or a regex string matched in full.
    """
    if spec is None or spec == "all-blocks":
        spec = default_target_modules(model)
    linear_names = [n for n, m in model.named_modules() if _is_linear(m)]

    if isinstance(spec, str):
        matched = [n for n in linear_names if re.fullmatch(spec, n)]
    else:
        matched = [n for n in linear_names if any(n == t or n.endswith("." + t) for t in spec)]
        missing = [t for t in spec if not any(n == t or n.endswith("." + t) for n in linear_names)]
        if missing and matched:
            raise DomixError(
                f"target modules {missing} match no linear layer of this model; "
                f"its linear layers are named {_leaf_names(linear_names)}"
            )
    if not matched:
        raise DomixError(
            f"target modules {spec!r} match no linear layer of this model; "
            f"its linear layers are named {_leaf_names(linear_names)}"
        )
    return spec, matched


def _leaf_names(names: list[str]) -> str:
    return ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names}))


def head_module_name(model: nn.Module) -> str:
    """The top-level child holding the LM head's output layer (``cls``, ``lm_head``, ...)."""
    out = model.get_output_embeddings()
    for name, child in model.named_children():
        if child is out or any(m is out for m in child.modules()):
            return name
    raise DomixError("cannot find this model's language-model head, so --train-head is not available for it")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted path ``name`` of ``model`` (replacing what is there)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
