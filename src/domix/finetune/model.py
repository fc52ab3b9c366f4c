"""Task models: a sequence classifier on the frozen base with DoMIX bridges (or a PEFT LoRA).

On disk a task model is a folder with ``domix_task.json`` (what it is and how it scored),
``task_model.safetensors`` (A_cat, B_cat, P and s of every bridged layer, and the head), or a
PEFT adapter (LoRA, DoRA), or the whole model (full fine-tuning), plus the tokenizer. It reloads from the base model
alone: the module store is not needed any more.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from domix import atomic
from domix.base_model import load_failed, model_source, weights_fingerprint
from domix.bridge import BridgeConfig, compose, fold
from domix.bridge.model import bridge_tensors, bridged_layers, restore_bridges
from domix.errors import DomixError
from domix.mixda import model as mixda_model
from domix.mode import model as mode_model
from domix.store import DomainModule
from domix.system import DTYPES

TASK_FILE = "domix_task.json"
WEIGHTS_FILE = "task_model.safetensors"
PEFT_METHODS = ("lora", "lora_fa", "dora")


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


def build_domix(model: nn.Module, head: list[str], modules: list[DomainModule], cfg) -> list[dict]:
    """Bridge the modules into ``model`` in place; returns the optimizer's parameter groups.

    Method ``domix`` trains P (its own group, with its own learning rate and weight decay, as the
    published code does), B_cat and the head. ``domix_fixed`` keeps P frozen at its initial value, and
    ``cat`` keeps it frozen at the identity: PEFT's ``add_weighted_adapter(..., combination_type="cat")``
    with weights 1. The comparison of the three shows what training the bridge buys.
    """
    fixed = cfg.method != "domix"
    compose(model, modules, BridgeConfig("identity" if cfg.method == "cat" else cfg.p_init, cfg.p_lr, cfg.p_weight_decay))
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)
    layers = bridged_layers(model).values()
    rest = {"params": [m.lora_B for m in layers] + [params[n] for n in head], "lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if fixed:
        for m in layers:
            m.bridge.requires_grad_(False)
        return [rest]
    return [{"params": [m.bridge for m in layers], "lr": cfg.p_lr or cfg.lr, "weight_decay": cfg.p_weight_decay}, rest]


def build_peft(model: nn.Module, head: list[str], targets: list[str], cfg, rank: int, init: DomainModule | None = None):
    """LoRA, LoRA-FA or DoRA (``cfg.method``) through PEFT on ``targets``, head trained.

    From the base: rank ``rank``, alpha 2·rank, B zero. LoRA-FA freezes A at its random init, so only
    B and the head train: DoMIX's trainable shape without any domain knowledge in A. From a module (``init``): its rank, alpha
    and trained pairs, so training starts at the base plus that module (for DoRA the magnitude is
    re-initialised to the norm of the merged weight, as DoRA does for a fresh adapter).
    """
    from peft import LoraConfig, get_peft_model

    head_modules = sorted({n.rsplit(".", 1)[0] for n in head})
    alpha = 2 * rank
    if init is not None:
        targets, rank, alpha = sorted(init.lora_A), init.rank, init.adapter_config["lora_alpha"]
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, modules_to_save=head_modules,
                                                  use_dora=cfg.method == "dora", use_rslora=bool(init and init.adapter_config.get("use_rslora"))))
    if init is not None:
        _load_pairs(peft_model, init)
    if cfg.method == "lora_fa":
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    groups = [{"params": [p for p in peft_model.parameters() if p.requires_grad], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    return peft_model, groups


@torch.no_grad()
def _load_pairs(peft_model: nn.Module, module: DomainModule) -> None:
    named = dict(peft_model.base_model.model.named_modules())
    for layer, A in module.lora_A.items():
        target = named.get(layer)
        if target is None or not hasattr(target, "lora_A"):
            raise DomixError(f"module {module.name!r} adapts layer {layer!r}, which this model does not have; it was trained on another base model")
        weight_A, weight_B = target.lora_A["default"].weight, target.lora_B["default"].weight
        if weight_A.shape != A.shape or weight_B.shape != module.lora_B[layer].shape:
            raise DomixError(f"module {module.name!r} has shape {tuple(module.lora_B[layer].shape[:1]) + tuple(A.shape[1:])} "
                             f"for layer {layer!r}, which does not fit this model; it belongs to another base model")
        weight_A.copy_(A)
        weight_B.copy_(module.lora_B[layer])
        if getattr(target, "lora_magnitude_vector", None):
            target.lora_magnitude_vector["default"].update_layer(
                base_layer=target.get_base_layer(), lora_A=weight_A, lora_B=weight_B, scaling=target.scaling["default"])


def build_head(model: nn.Module, head: list[str], cfg) -> list[dict]:
    """Only the classification head trains: what a task gets from the frozen base's features alone."""
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for name in head:
        params[name].requires_grad_(True)
    return [{"params": [params[n] for n in head], "lr": cfg.lr, "weight_decay": cfg.weight_decay}]


def build_full(model: nn.Module, cfg) -> list[dict]:
    """Full fine-tuning: every weight trains."""
    for p in model.parameters():
        p.requires_grad_(True)
    return [{"params": list(model.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_task_model(model: nn.Module, tokenizer, record: dict, folder: Path) -> None:
    """Write a task model folder atomically."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        if record["method"] in PEFT_METHODS + ("full",):
            model.save_pretrained(tmp)
        elif record["method"] == "mixda":  # adapters, gates, task adapters and head
            save_file(mixda_model.task_tensors(model, record["head"]), str(tmp / WEIGHTS_FILE))
        elif record["method"] == "mode":  # experts, gates and head
            save_file(mode_model.task_tensors(model, record["head"]), str(tmp / WEIGHTS_FILE))
        else:  # the bridged methods and head: every bridged layer (none for head) and the head
            tensors = bridge_tensors(model)
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if not (folder / TASK_FILE).is_file():
        raise DomixError(f"{folder} is not a domix task model (no {TASK_FILE}); give the --out folder of domix finetune")
    record = atomic.read_json(folder / TASK_FILE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if record["method"] == "full":  # every weight is in the folder
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=DTYPES[record["dtype"]])
        return model.to(device).eval(), tokenizer, record
    model, _ = classification_model(record["base_model"]["name"], record["labels"], DTYPES[record["dtype"]], seed=0)
    if weights_fingerprint(model) != record["base_model"]["fingerprint"]:
        raise DomixError(f"the base model {record['base_model']['name']} is not the one this task model was trained on "
                         "(its weights' fingerprint differs); use that base model")
    if record["method"] in PEFT_METHODS:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder)
    elif record["method"] == "mixda":
        mixda_model.load_task_tensors(model, record, load_file(str(folder / WEIGHTS_FILE)))
    elif record["method"] == "mode":
        mode_model.rebuild_task_model(model, record, load_file(str(folder / WEIGHTS_FILE)), folder)
    else:
        tensors = load_file(str(folder / WEIGHTS_FILE))
        restore_bridges(model, tensors, record["layers"])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in record["head"]:
                params[name].copy_(tensors[name])
    return model.to(device).eval(), tokenizer, record


def export(folder: str | Path, out: str | Path) -> None:
    """Fold a task model into a plain transformers folder (no domix needed to load it)."""
    model, tokenizer, record = load_task_model(folder)
    if record["method"] == "mixda":
        raise DomixError("a MixDA task model cannot be exported as a plain transformers model: its gates weigh the domain "
                         "adapters per input, which no fixed weight can hold; use the task model folder itself "
                         "(domix evaluate, or domix.finetune.model.load_task_model)")
    if record["method"] == "mode":
        raise DomixError("a MoDE task model cannot be exported as a plain transformers model: its blocks add expert layers "
                         "beside the backbone's and mix them per token, which no plain model of the base's architecture holds; "
                         "use the task model folder itself (domix evaluate, or domix.finetune.model.load_task_model)")
    if record["method"] in PEFT_METHODS:
        plain = model.merge_and_unload()
    else:
        plain = model if record["method"] == "full" else fold(model)
    plain.name_or_path = record["base_model"]["name"]

    def fill(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic.replace_dir(Path(out), fill)
