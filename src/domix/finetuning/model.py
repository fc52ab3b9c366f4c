"""Task models of sequence classification: the base with a new head, and the folder a run saves.

On disk a task model is a folder with ``domix_task.json`` (what it is and how it scored), the
weights its method adds (``methods.base.TaskMethod.save``: the bridged layers and the head, a PEFT
adapter, MixDA's or MoDE's layers, or the whole model) and the tokenizer. It reloads from the base
model alone: the module store is not needed any more.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from domix import atomic
from domix.model_card import run_settings, write_model_card
from domix.base_model import load_failed, model_reference, model_source, weights_fingerprint
from domix.errors import DomixError
from domix.methods.base import EXPORT_FILE, TASK_FILE
from domix.methods.registry import task_method
from domix.system import DTYPES


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
        print(f"domix: the tokenizer has no pad token; padding with its end-of-sequence token {tokenizer.eos_token!r}")
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def save_task_model(model: nn.Module, tokenizer, record: dict, folder: Path) -> None:
    """Write a task model folder atomically: the method's weights, the tokenizer, the record."""

    def fill(tmp: Path) -> None:
        task_method(record["method"]).save(model, record, tmp)
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / TASK_FILE, record)

    atomic.replace_dir(Path(folder), fill)


def recorded_base(record: dict, base: str | None) -> str:
    """The base model to rebuild a saved model on: ``base`` if given, else the one its record names."""
    name = base or record["base_model"]["name"]
    if base is None and (Path(name).is_absolute() or name.startswith(".")) and not Path(name).exists():
        raise DomixError(f"the base model this model was trained on, {name}, is not there any more; "
                         "pass --model with where it is now")
    return name


def load_task_model(folder: str | Path, device: torch.device | str = "cpu", base: str | None = None) -> tuple[nn.Module, object, dict]:
    """Rebuild a task model from its folder and the base model (``base``, default the one its record names):
    (model, tokenizer, record)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if not (folder / TASK_FILE).is_file():
        raise DomixError(f"{folder} is not a domix task model (no {TASK_FILE}); give the --out folder of domix finetune")
    record = atomic.read_json(folder / TASK_FILE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    method = task_method(record["method"])
    if method.whole_model:  # every weight is in the folder
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=DTYPES[record["dtype"]])
        return model.to(device).eval(), tokenizer, record
    base_name = recorded_base(record, base)
    model, _ = classification_model(base_name, record["labels"], DTYPES[record["dtype"]], seed=0)
    if weights_fingerprint(model) != record["base_model"]["fingerprint"]:
        raise DomixError(f"the base model {base_name} is not the one this task model was trained on "
                         "(its weights' fingerprint differs); use that base model")
    model = method.load(model, record, folder)
    return model.to(device).eval(), tokenizer, record


def export(folder: str | Path, out: str | Path, base: str | None = None) -> None:
    """Fold a task model into a plain transformers folder (no domix needed to load it)."""
    model, tokenizer, record = load_task_model(folder, base=base)
    write_export(folder, out, model, tokenizer, record, causal=False, max_length=record["max_length"])


def write_export(folder: str | Path, out: str | Path, model: nn.Module, tokenizer, record: dict, causal: bool, **recorded) -> None:
    """The task model of ``folder`` (loaded: ``model``, its record) in the base's own architecture, written to ``out``
    atomically with its tokenizer, a model card and where it came from (``recorded``: what its loader needs to know:
    a classifier's max length, a causal LM's prompt template)."""
    plain = task_method(record["method"]).plain(model, record)
    plain.name_or_path = record["base_model"]["name"]
    if causal:
        plain.config.use_cache = True

    def fill(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / EXPORT_FILE, {"from": model_reference(str(folder)), "method": record["method"], **recorded,
                                              "base_model": record["base_model"]})
        write_model_card(tmp, record, run_settings(Path(folder)), causal=causal)

    atomic.replace_dir(Path(out), fill)
