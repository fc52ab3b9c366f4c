"""Scoring a task model (domix's folder or an exported transformers folder) on labeled data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from domix import atomic
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.engine.predict import predict
from domix.finetuning.model import load_task_model
from domix.methods.base import EXPORT_FILE, TASK_FILE
from domix.metrics import classification_scores
from domix.sources import Columns
from domix.tasks import encode, read_split


def load_any(folder: str | Path, device: str = "cpu", base: str | None = None):
    """(model, tokenizer, labels, max_length) from a task model folder (on ``base``, default its record's) or an
    exported one."""
    folder = Path(folder)
    if (folder / TASK_FILE).is_file():
        model, tokenizer, record = load_task_model(folder, device, base)
        return model, tokenizer, record["labels"], record["max_length"]
    if not (folder / "config.json").is_file():
        raise DomixError(f"{folder} is neither a domix task model nor an exported model folder")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    exported = folder / EXPORT_FILE  # domix export says the max length the model was trained with
    return model, AutoTokenizer.from_pretrained(folder), labels, atomic.read_json(exported)["max_length"] if exported.is_file() else None


def evaluate_file(folder: str | Path, data: str | Path, predictions: str | Path | None = None,
                  max_length: int | None = None, batch_size: int = 32, base: str | None = None, columns: Columns = Columns(),
                  split: str | None = None) -> dict[str, float]:
    """Scores of a task model on ``data`` (any source ``domix.sources`` reads; a dataset's ``split``, default test)."""
    examples = read_split(data, "evaluation", columns, split or "test")
    model, tokenizer, labels, trained_length = load_any(folder, base=base)
    unseen = sorted(set(examples.labels) - set(labels))
    if unseen:
        raise DomixError(f"{data} has label(s) {unseen} that the model does not know; it knows {labels}")
    rows = encode(examples, tokenizer, trained_length or max_length or FinetuneConfig.max_length)
    logits = predict(model, rows, tokenizer.pad_token_id, batch_size, "cpu")
    predicted = logits.argmax(-1)
    gold = torch.tensor([labels.index(label) for label in examples.labels])
    scores = classification_scores(predicted, gold, len(labels))
    if predictions:
        lines = [json.dumps({"text": t, "label": g, "prediction": labels[p]}) for t, g, p in zip(examples.texts, examples.labels, predicted.tolist())]
        atomic.write_text(Path(predictions), "\n".join(lines) + "\n")
    return scores
