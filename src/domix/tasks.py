"""Labeled end tasks: jsonl files with ``text``, optional ``text_pair`` and ``label``.

A task is a folder holding train.jsonl, dev.jsonl and test.jsonl, or explicit files.
The label set is taken from train; dev and test may not hold a label train never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from domix.errors import DomixError
from domix.jsonl import jsonl_rows

SPLITS = ("train", "dev", "test")


@dataclass
class Split:
    name: str
    path: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]


@dataclass
class Task:
    name: str
    splits: dict[str, Split]
    labels: list[str]  # sorted label names; a label's id is its index

    def label_ids(self, split: str) -> torch.Tensor:
        index = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([index[label] for label in self.splits[split].labels])


def read_split(path: str | Path, name: str) -> Split:
    path = Path(path)
    if not path.is_file():
        raise DomixError(f"the {name} split {path} does not exist; give train, dev and test files (or a folder holding train.jsonl, dev.jsonl, test.jsonl)")
    texts, pairs, labels = [], [], []
    for lineno, row in jsonl_rows(path):
        for column in ("text", "label"):
            if column not in row:
                raise DomixError(f"{path}:{lineno} has no {column!r} column; each line needs 'text' and 'label' (and may have 'text_pair')")
        texts.append(str(row["text"]))
        pairs.append(row.get("text_pair"))
        labels.append(str(row["label"]))
    if not texts:
        raise DomixError(f"the {name} split {path} holds no example")
    has_pair = [p is not None for p in pairs]
    if any(has_pair) and not all(has_pair):
        raise DomixError(f"{path}: 'text_pair' is set on some lines and missing on others; set it on all or none")
    return Split(name=name, path=str(path), texts=texts, pairs=[str(p) for p in pairs] if all(has_pair) else None, labels=labels)


def read_task(path: str | Path | None = None, name: str | None = None, **files: str | None) -> Task:
    """Read a task folder, or explicit ``train=``, ``dev=``, ``test=`` files (which win)."""
    chosen = {}
    for split in SPLITS:
        given = files.get(split)
        if given is None and path is not None:
            if not Path(path).is_dir():
                raise DomixError(f"task folder {path} does not exist")
            given = Path(path) / f"{split}.jsonl"
        if given is None:
            raise DomixError(f"no {split} split given; pass a task folder or --{split} FILE")
        chosen[split] = read_split(given, split)
    labels = sorted(set(chosen["train"].labels))
    if len(labels) < 2:
        raise DomixError(f"the train split has only the label {labels}; a classification task needs at least two")
    for split in ("dev", "test"):
        unseen = sorted(set(chosen[split].labels) - set(labels))
        if unseen:
            raise DomixError(f"the {split} split has label(s) {unseen} that train never has; the label sets must match (train has {labels})")
    if (chosen["train"].pairs is None) != (chosen["test"].pairs is None) or (chosen["train"].pairs is None) != (chosen["dev"].pairs is None):
        raise DomixError("'text_pair' is in some splits and not in others; use it in all splits or none")
    return Task(name=name or (Path(path).name if path else "task"), splits=chosen, labels=labels)


def encode(split: Split, tokenizer, max_length: int) -> list[list[int]]:
    """Token ids of each example, truncated.

    A pair becomes the tokenizer's pair encoding ([CLS] a [SEP] b [SEP] for BERT); tokenizers
    without a separator token (most decoders) get the two texts on two lines instead.
    """
    if split.pairs is None:
        return tokenizer(split.texts, truncation=True, max_length=max_length)["input_ids"]
    if tokenizer.sep_token is None:
        joined = [f"{a}\n{b}" for a, b in zip(split.texts, split.pairs)]
        return tokenizer(joined, truncation=True, max_length=max_length)["input_ids"]
    return tokenizer(split.texts, split.pairs, truncation="longest_first", max_length=max_length)["input_ids"]


def pad_batch(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and attention mask (sequence classifiers read the last real token)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
