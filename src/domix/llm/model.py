"""Causal-LM task models: build (DoMIX bridge, PEFT LoRA/DoRA, full), save, reload, fold and export.

A saved model is a folder like finetune's (``domix_task.json`` with ``"kind": "causal-lm"``, the
bridged tensors A_cat, B_cat, P, s in ``task_model.safetensors``, or a PEFT adapter, or the whole
model, plus the tokenizer) and reloads from the base model alone. :func:`export_causal` folds it
into a plain folder that ``AutoModelForCausalLM.from_pretrained`` loads and ``generate()``s with.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from domix import atomic
from domix.base_model import load_base_model, weights_fingerprint
from domix.errors import DomixError
from domix.finetuning.model import recorded_base, save_task_model, write_export
from domix.llm.config import InstructConfig
from domix.methods.base import EXPORT_FILE, TASK_FILE, TaskMethod
from domix.methods.registry import task_method
from domix.store import DomainModule
from domix.system import DTYPES

CAUSAL_KIND = "causal-lm"
__all__ = ["CAUSAL_KIND", "build", "export_causal", "is_causal_task_model", "load_causal",
           "load_causal_task_model", "load_for_eval", "resolve_dtype", "save_task_model"]


def resolve_dtype(name: str, device: torch.device) -> str:
    """``auto``: bfloat16 on a GPU that supports it, float32 otherwise."""
    if name != "auto":
        return name
    return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def load_causal(name: str, dtype: str) -> tuple[nn.Module, object]:
    """A causal LM and its tokenizer (padding with EOS when it has no pad token)."""
    base = load_base_model(name, "clm", DTYPES[dtype])
    tokenizer = base.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base.model.config.pad_token_id = tokenizer.pad_token_id
    return base.model, tokenizer


def build(model: nn.Module, modules: list[DomainModule], cfg: InstructConfig, method: TaskMethod) -> tuple[nn.Module, list[dict]]:
    """Make ``model`` trainable the way ``method`` (``cfg.method``) says: (model, optimizer groups).

    domix: the modules concatenated with the bridge, only B_cat and P train (the LM head and the
    embeddings stay frozen). lora / dora: PEFT on ``cfg.target_modules`` (default q, k, v, up and
    down projections), rank ``cfg.lora_rank`` (default the modules' total rank, else 16), alpha 2·rank.
    """
    return method.build(model, [], modules, cfg)  # the engine turns gradient checkpointing on while it trains


def is_causal_task_model(folder: str | Path) -> bool:
    file = Path(folder) / TASK_FILE
    return file.is_file() and atomic.read_json(file).get("kind") == CAUSAL_KIND


def load_causal_task_model(folder: str | Path, device: torch.device | str = "cpu", base: str | None = None) -> tuple[nn.Module, object, dict]:
    """Rebuild a ``domix instruct`` model from its folder and the base model: (model, tokenizer, record)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not is_causal_task_model(folder):
        raise DomixError(f"{folder} is not a domix instruct model (no {TASK_FILE} of kind {CAUSAL_KIND}); "
                         "give the model/ folder of a domix instruct run")
    record = atomic.read_json(folder / TASK_FILE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = DTYPES[record["dtype"]]
    method = task_method(record["method"])
    if method.whole_model:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        return model.to(device).eval(), tokenizer, record
    base_name = recorded_base(record, base)
    model, _ = load_causal(base_name, record["dtype"])
    if weights_fingerprint(model) != record["base_model"]["fingerprint"]:
        raise DomixError(f"the base model {base_name} is not the one this model was trained on "
                         "(its weights' fingerprint differs); use that base model")
    model.config.pad_token_id = tokenizer.pad_token_id
    model = method.load(model, record, folder)
    return model.to(device).eval(), tokenizer, record


def load_for_eval(source: str, device: torch.device | str = "cpu", dtype: str = "auto",
                  base: str | None = None) -> tuple[nn.Module, object, str | None]:
    """A model to evaluate or generate with: a domix instruct model folder (rebuilt on ``base``, default the one
    its record names), an exported folder, or any causal LM (name or folder). Returns (model, tokenizer, the
    template it was trained with or None)."""
    if is_causal_task_model(source):
        model, tokenizer, record = load_causal_task_model(source, device, base)
        return model, tokenizer, record["template"]
    if (Path(source) / TASK_FILE).is_file():
        raise DomixError(f"{source} is a sequence-classification task model (domix finetune), not a causal LM; "
                         "use domix evaluate for it")
    model, tokenizer = load_causal(source, resolve_dtype(dtype, torch.device(device)))
    exported = Path(source) / EXPORT_FILE
    template = atomic.read_json(exported).get("template") if exported.is_file() else None
    return model.to(device).eval(), tokenizer, template


def export_causal(folder: str | Path, out: str | Path, base: str | None = None) -> None:
    """Fold a ``domix instruct`` model into a plain causal-LM folder (W' = W + B_cat diag(s) P A_cat)."""
    model, tokenizer, record = load_causal_task_model(folder, base=base)
    write_export(folder, out, model, tokenizer, record, causal=True, template=record["template"])
