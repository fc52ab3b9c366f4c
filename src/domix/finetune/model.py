"""Task models: a sequence classifier on the frozen base with DoMIX bridges (or a PEFT LoRA).

On disk a task model is a folder with ``domix_task.json`` (what it is and how it scored),
``task_model.safetensors`` (A_cat, B_cat, P and s of every bridged layer, and the head) or,
for the LoRA baseline, a PEFT adapter, plus the tokenizer. It reloads from the base model
alone: the module store is not needed any more.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from domix import atomic
from domix.base_model import load_failed, model_source, weights_fingerprint
from domix.bridge import BridgeConfig, BridgedLinear, compose, fold
from domix.bridge.model import set_submodule, bridged_layers
from domix.errors import DomixError
from domix.system import DTYPES

TASK_FILE = "domix_task.json"
WEIGHTS_FILE = "task_model.safetensors"


def classification_model(base: str, labels: list[str], dtype: torch.dtype, seed: int) -> tuple[nn.Module, list[str]]:
    """The base model with a new classification head; returns it and the head's parameter names.

    The head is whatever the base checkpoint does not hold (classifier, score, a BERT pooler).
    """
    from transformers import AutoModelForSequenceClassification

    where, extra = model_source(base)
    torch.manual_seed(seed)  # the head's initialisation
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
            dtype=dtype, output_loading_info=True, **extra,
        )
    except (OSError, ValueError, KeyError) as err:
        raise load_failed(base, err) from None
    head = sorted(info["missing_keys"])
    return model, head


def load_tokenizer_for(base: str, model: nn.Module):
    from transformers import AutoTokenizer

    where, extra = model_source(base)
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if tokenizer.pad_token_id is None:  # decoders: pad with end-of-sequence, read the last real token
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def build_domix(model: nn.Module, head: list[str], modules, cfg) -> list[dict]:
    """Bridge the modules into ``model`` in place; returns the optimizer's parameter groups (P, then B_cat and head)."""
    compose(model, modules, BridgeConfig(cfg.p_init, cfg.p_lr, cfg.p_weight_decay))
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)
    bridges = [m.bridge for m in bridged_layers(model).values()]
    rest = [m.lora_B for m in bridged_layers(model).values()] + [params[n] for n in head]
    return [
        {"params": bridges, "lr": cfg.p_lr or cfg.lr, "weight_decay": cfg.p_weight_decay},
        {"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
    ]


def build_lora(model: nn.Module, head: list[str], targets, rank: int, cfg):
    """The plain-LoRA baseline through PEFT: same layers, rank Σr, alpha 2r, head trained."""
    from peft import LoraConfig, get_peft_model

    head_modules = sorted({n.rsplit(".", 1)[0] for n in head})
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, modules_to_save=head_modules))
    groups = [{"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    return peft_model, groups


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_task_model(model: nn.Module, tokenizer, record: dict, folder: Path) -> None:
    """Write a task model folder atomically."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        if record["method"] == "lora":
            model.save_pretrained(tmp)
        else:
            tensors = {}
            for name, layer in bridged_layers(model).items():
                for part in ("lora_A", "lora_B", "bridge", "scales"):
                    tensors[f"{name}.{part}"] = getattr(layer, part).detach().cpu().contiguous()
            params = dict(model.named_parameters())
            for name in record["head"]:
                tensors[name] = params[name].detach().cpu().contiguous()
            save_file(tensors, str(tmp / WEIGHTS_FILE))
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / TASK_FILE, record)

    atomic.replace_dir(Path(folder), fill)


def load_task_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, object, dict]:
    """Rebuild a task model from its folder and the base model: (model, tokenizer, record)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / TASK_FILE).is_file():
        raise DomixError(f"{folder} is not a domix task model (no {TASK_FILE}); give the --out folder of domix finetune")
    record = atomic.read_json(folder / TASK_FILE)
    model, _ = classification_model(record["base_model"]["name"], record["labels"], DTYPES[record["dtype"]], seed=0)
    if weights_fingerprint(model) != record["base_model"]["fingerprint"]:
        raise DomixError(f"the base model {record['base_model']['name']} is not the one this task model was trained on "
                         "(its weights' fingerprint differs); use that base model")
    if record["method"] == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder)
    else:
        tensors = load_file(str(folder / WEIGHTS_FILE))
        named = dict(model.named_modules())
        for name in record["layers"]:
            get = lambda part: tensors[f"{name}.{part}"]  # noqa: E731
            layer = BridgedLinear(named[name], get("lora_A"), get("lora_B"), get("scales"), 0.0, dtype=get("lora_A").dtype)
            with torch.no_grad():
                layer.bridge.copy_(get("bridge"))
            set_submodule(model, name, layer)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in record["head"]:
                params[name].copy_(tensors[name])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tokenizer, record


def export(folder: str | Path, out: str | Path) -> None:
    """Fold a task model into a plain transformers folder (no domix needed to load it)."""
    model, tokenizer, record = load_task_model(folder)
    plain = model.merge_and_unload() if record["method"] == "lora" else fold(model)
    plain.name_or_path = record["base_model"]["name"]

    def fill(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic.replace_dir(Path(out), fill)
