"""Unlabeled domain corpora: reading, fingerprinting, and cutting into training blocks.

A corpus is anything ``domix.sources`` reads: a text file with one passage a line, a jsonl, CSV, TSV or
Parquet file with a text column, a ``save_to_disk`` folder, a dataset name, or a folder of such files
(read in sorted order). It is never held in memory: reading streams its passages once to check them and
fingerprint their text, and tokenizing writes the token ids to a memory-mapped cache (``domix.tokens``).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from domix.errors import DomixError
from domix.sources import (CHUNK, JSONL_SUFFIXES, TABLE_SUFFIXES, TEXT_SUFFIXES, is_saved_dataset, jsonl_rows, load_table,
                           looks_like_dataset_name, pick_split, require_columns, table_rows, text_lines)
from domix.tokens import TokenBlocks, token_ids

CORPUS_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + tuple(TABLE_SUFFIXES)
BINARY_SAMPLE = 200_000  # characters of a corpus checked for control codes


@dataclass
class Corpus:
    name: str
    path: str
    passages: int  # non-blank passages
    fingerprint: str  # of the passages' text, whatever files or format held them
    text_column: str = "text"

    def chunks(self) -> Iterator[list[str]]:
        """The passages, stripped and non-blank, in lists of at most ``sources.CHUNK``."""
        return _chunks(self.path, self.name, self.text_column)


def read_corpus(name: str, path: str | Path, text_column: str = "text") -> Corpus:
    """Read a domain corpus once (streamed) to check it and fingerprint its text, refusing a missing
    source, one without text, or binary data."""
    source = str(path)
    if not Path(source).exists() and not looks_like_dataset_name(source):
        raise DomixError(f"corpus of domain {name!r} not found: {source} does not exist")
    digest, count, sample = hashlib.sha256(), 0, []
    sampled = 0
    for chunk in _chunks(source, name, text_column):
        for passage in chunk:
            if count:
                digest.update(b"\n")
            digest.update(passage.encode("utf-8"))
            count += 1
            if sampled < BINARY_SAMPLE:
                sample.append(passage)
                sampled += len(passage) + 1
    if not count:
        raise DomixError(f"corpus of domain {name!r} ({source}) has no text; give a file with one passage a line")
    _refuse_non_text(source, "\n".join(sample)[:BINARY_SAMPLE])
    return Corpus(name=name, path=source, passages=count, fingerprint=digest.hexdigest()[:16], text_column=text_column)


def _chunks(source: str, name: str, text_column: str) -> Iterator[list[str]]:
    path = Path(source)
    if path.is_dir() and not is_saved_dataset(path):
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
        if not files:
            raise DomixError(f"corpus folder {path} of domain {name!r} holds no {', '.join(CORPUS_SUFFIXES)} file")
    else:
        files = [path]
    for file in files:
        yield from _file_chunks(file, source, name, text_column)


def _file_chunks(path: Path, source: str, name: str, text_column: str) -> Iterator[list[str]]:
    suffix = path.suffix.lower()
    if path.is_file() and suffix in TEXT_SUFFIXES:
        rows = ({"text": line} for line in text_lines(path))
        column = "text"
    elif path.is_file() and suffix in JSONL_SUFFIXES:
        rows = (_with_column(row, text_column, path, lineno) for lineno, row in jsonl_rows(path))
        column = text_column
    elif path.is_file() and suffix not in TABLE_SUFFIXES:
        raise DomixError(f"corpus file {path} has an unsupported type {suffix or '(none)'}; use .txt (a passage a line), "
                         ".jsonl, .csv, .tsv or .parquet (a text column), a save_to_disk folder or a dataset name")
    else:
        what = f"corpus of domain {name!r}"
        dataset = pick_split(load_table(path if path.exists() else source, what), None, what, source,
                             "give the split to train on as its own file or save_to_disk folder")
        require_columns(dataset.column_names, {"text": text_column}, what, source)
        rows = (row for chunk in table_rows(dataset, [text_column]) for row in chunk)
        column = text_column
    chunk: list[str] = []
    for row in rows:
        text = str(row[column] if row[column] is not None else "").strip()
        if text:
            chunk.append(text)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _with_column(row: dict, column: str, path: Path, lineno: int) -> dict:
    if column not in row:
        raise DomixError(f"{path}:{lineno} has no {column!r} field; each line must be an object like {{\"{column}\": \"...\"}}"
                         + ("" if column != "text" else " (or name the field with --text-column)"))
    return row


def _refuse_non_text(source: str, sample: str, limit: float = 0.05) -> None:
    """Refuse a corpus whose characters are mostly control codes (binary data saved as .txt): valid
    UTF-8 can still be binary, and a model trained on it learns nothing of a domain."""
    control = sum(1 for c in sample if unicodedata.category(c) in ("Cc", "Co", "Cn") and c not in "\n\r\t")
    if sample and control / len(sample) > limit:
        raise DomixError(f"{source} is not text: {100 * control / len(sample):.0f}% of its first {len(sample):,} characters "
                         "are control codes; give a text file with one passage a line")


def tokenize_blocks(corpus: Corpus, tokenizer, seq_len: int, append_eos: bool) -> TokenBlocks:
    """Tokenize every passage, concatenate, and cut into blocks of ``seq_len`` tokens.

    The tail shorter than a block is dropped (as Hugging Face's run_mlm/run_clm do).
    ``append_eos`` ends each passage with the end-of-sequence token (causal LMs whose
    tokenizer does not add one), so passages do not run into each other. The token ids come
    from the memory-mapped cache (``domix.tokens``): a corpus is tokenized once per tokenizer.
    """
    ids = token_ids(corpus, tokenizer, append_eos)
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise DomixError(
            f"corpus of domain {corpus.name!r} has {len(ids)} tokens, too short for one sequence of "
            f"{seq_len}; give more text or a smaller --seq-len"
        )
    return TokenBlocks.of_stream(ids, seq_len)


def split_heldout(
    blocks: TokenBlocks, fraction: float, max_blocks: int, seed: int, domain: str
) -> tuple[TokenBlocks, TokenBlocks]:
    """Set aside a random held-out slice of blocks (at least one, at most ``max_blocks``)."""
    n = len(blocks)
    k = min(max_blocks, max(1, round(n * fraction))) if fraction > 0 else 0
    if n - k < 1:
        raise DomixError(
            f"corpus of domain {domain!r} makes only {n} sequence(s), too few to hold one out and "
            "train on the rest; give more text or a smaller --seq-len"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return blocks.take(perm[k:].sort().values), blocks.take(perm[:k].sort().values)
