"""Labeled end tasks: rows with a text, an optional text pair and a label.

A task is a folder holding train, dev and test files (``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet``),
explicit files, a ``save_to_disk`` folder of a DatasetDict, or a dataset name (``domix.sources``). The
columns default to ``text``, ``text_pair`` and ``label``; ``Columns`` names others. The label set is
taken from train; dev and test may not hold a label train never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from domix.errors import DomixError
from domix.sources import (JSONL_SUFFIXES, TABLE_SUFFIXES, Columns, is_saved_dataset, jsonl_rows, label_names, load_table,
                           looks_like_dataset_name, pick_split, require_columns, table_rows)

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


SPLIT_FILE_SUFFIXES = JSONL_SUFFIXES + tuple(TABLE_SUFFIXES)


def read_split(source: str | Path, name: str, columns: Columns = Columns(), split: str | None = None) -> Split:
    """One split: a jsonl/CSV/TSV/Parquet file, or a split (``split``, default ``name``) of a saved
    dataset or dataset name."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in JSONL_SUFFIXES:
        return _jsonl_split(path, name, columns)
    if path.is_file() and path.suffix.lower() not in TABLE_SUFFIXES:
        raise DomixError(f"the {name} split {path} has an unsupported type {path.suffix or '(none)'}; use "
                         f"{', '.join(SPLIT_FILE_SUFFIXES)}, a save_to_disk folder or a dataset name")
    if not path.exists() and not looks_like_dataset_name(str(source)):
        raise DomixError(f"the {name} split {path} does not exist; give train, dev and test files (or a folder holding "
                         "train.jsonl, dev.jsonl, test.jsonl)")
    what = f"the {name} split"
    hint = "name the one to use with --split NAME"
    return _dataset_split(pick_split(load_table(source, what), split or name, what, source, hint), name, str(source), columns)


def _jsonl_split(path: Path, name: str, columns: Columns) -> Split:
    pair_column = columns.text_pair or "text_pair"
    texts, pairs, labels = [], [], []
    for lineno, row in jsonl_rows(path):
        for column in (columns.text, columns.label) + ((columns.text_pair,) if columns.text_pair else ()):
            if column not in row:
                raise DomixError(f"{path}:{lineno} has no {column!r} column; each line needs {columns.text!r} and "
                                 f"{columns.label!r} (and may have {pair_column!r}); other names: {columns.flags()}")
        texts.append(str(row[columns.text]))
        pairs.append(row.get(pair_column))
        labels.append(str(row[columns.label]))
    return _split(name, str(path), texts, pairs, labels, pair_column)


def _dataset_split(dataset, name: str, source: str, columns: Columns) -> Split:
    what = f"the {name} split of"
    require_columns(dataset.column_names, {"text": columns.text, "label": columns.label,
                                           **({"text_pair": columns.text_pair} if columns.text_pair else {})}, what, source)
    pair_column = columns.text_pair or "text_pair"
    wanted = [columns.text, columns.label] + ([pair_column] if pair_column in dataset.column_names else [])
    names = label_names(dataset, columns.label)  # a ClassLabel column holds ids: give the class names
    texts, pairs, labels = [], [], []
    for chunk in table_rows(dataset, wanted):
        for row in chunk:
            texts.append(str(row[columns.text]))
            pairs.append(row.get(pair_column))
            label = row[columns.label]
            labels.append(names[label] if names is not None and isinstance(label, int) and label >= 0 else str(label))
    return _split(name, source, texts, pairs, labels, pair_column)


def _split(name: str, source: str, texts: list[str], pairs: list, labels: list[str], pair_column: str) -> Split:
    if not texts:
        raise DomixError(f"the {name} split {source} holds no example")
    has_pair = [p is not None for p in pairs]
    if any(has_pair) and not all(has_pair):
        raise DomixError(f"{source}: {pair_column!r} is set on some rows and missing on others; set it on all or none")
    return Split(name=name, path=source, texts=texts, pairs=[str(p) for p in pairs] if all(has_pair) else None, labels=labels)


def read_task(path: str | Path | None = None, name: str | None = None, columns: Columns = Columns(),
              splits: dict[str, str] | None = None, without_test: bool = False, **files: str | None) -> Task:
    """Read a task: a folder of split files, a saved DatasetDict or dataset name, or explicit ``train=``,
    ``dev=``, ``test=`` sources (which win). ``splits`` maps domix's split names to the source's
    (``{"dev": "validation"}``); datasets' usual names (validation, valid, val) are tried for dev anyway.
    ``without_test``: the test split is not read at all (a selection run's task has train and dev only)."""
    splits = splits or {}
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise DomixError(f"--splits names {unknown}; name domix's splits train, dev and test, e.g. --splits dev=validation")
    table = _task_table(path)
    chosen = {}
    for split in SPLITS[:2] if without_test else SPLITS:
        given = files.get(split)
        if given is not None:
            chosen[split] = read_split(given, split, columns, splits.get(split))
        elif table is not None:
            hint = f"name the one to use with --splits {split}=NAME"
            chosen[split] = _dataset_split(pick_split(table, splits.get(split, split), "task", path, hint), split, str(path), columns)
        elif path is not None:
            chosen[split] = read_split(_split_file(Path(path), splits.get(split, split)), split, columns)
        else:
            raise DomixError(f"no {split} split given; pass a task folder or --{split} FILE")
    labels = sorted(set(chosen["train"].labels))
    if len(labels) < 2:
        raise DomixError(f"the train split has only the label {labels}; a classification task needs at least two")
    for split in list(chosen)[1:]:
        unseen = sorted(set(chosen[split].labels) - set(labels))
        if unseen:
            raise DomixError(f"the {split} split has label(s) {unseen} that train never has; the label sets must match (train has {labels})")
    if len({chosen[split].pairs is None for split in chosen}) > 1:
        raise DomixError("'text_pair' is in some splits and not in others; use it in all splits or none")
    return Task(name=name or (Path(str(path)).name if path else "task"), splits=chosen, labels=labels)


def _task_table(path: str | Path | None):
    """The DatasetDict of a saved dataset folder or dataset name, else None (a folder of split files)."""
    if path is None:
        return None
    folder = Path(path)
    if is_saved_dataset(folder) or (not folder.exists() and looks_like_dataset_name(str(path))):
        return load_table(path, "task")
    if not folder.is_dir():
        raise DomixError(f"task folder {path} does not exist" if not folder.exists() else
                         f"task {path} is a file; give a folder of train/dev/test files, a save_to_disk folder, "
                         "or the files with --train, --dev and --test")
    return None


def _split_file(folder: Path, stem: str) -> Path:
    found = [folder / f"{stem}{suffix}" for suffix in SPLIT_FILE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DomixError(f"task folder {folder} has {len(found)} files for the {stem} split ({[f.name for f in found]}); keep one")
    if not found:
        raise DomixError(f"the {stem} split of {folder} does not exist: give {stem}.jsonl, {stem}.csv, {stem}.tsv or "
                         f"{stem}.parquet (or name the split file with --splits, e.g. --splits dev=validation)")
    return found[0]


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


def seeded_sample(n: int, limit: int | None, seed: int, skip: int = 0, what: str = "examples") -> list[int]:
    """Indices (in order) of a seeded sample of ``limit`` of ``n`` examples (None: all of them) after leaving out the first
    ``skip`` of the seeded order: samples of one seed that skip 0 and take k, and skip k, are disjoint, and skip 0 taking
    2k is their union (how a comparison draws records for adapters apart from its rows' and an equal-data row)."""
    if skip and skip >= n:
        raise DomixError(f"--train-skip {skip} leaves none of the {n} {what}; skip fewer")
    if skip == 0 and (limit is None or limit >= n):
        return list(range(n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[skip:]
    return order[:limit].sort().values.tolist() if limit is not None else order.sort().values.tolist()


def subsample(task: Task, split: str, limit: int | None, seed: int, skip: int = 0) -> None:
    """Keep a seeded sample of ``limit`` examples of the task's ``split`` (in their order), in place; ``skip``: after the
    first ``skip`` of the seeded order (:func:`seeded_sample`)."""
    s = task.splits[split]
    keep = seeded_sample(len(s.texts), limit, seed, skip, f"{split} examples")
    if len(keep) == len(s.texts):
        return
    s.texts = [s.texts[i] for i in keep]
    s.labels = [s.labels[i] for i in keep]
    if s.pairs is not None:
        s.pairs = [s.pairs[i] for i in keep]
