"""Unlabeled domain corpora: reading, fingerprinting, and cutting into training blocks.

A corpus is a text file with one passage a line, a jsonl file whose objects have a
``text`` field, or a folder of such files (read in sorted order).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from domix.errors import DomixError
from domix.jsonl import jsonl_rows, read_utf8

TEXT_SUFFIXES = {".txt", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json"}


@dataclass
class Corpus:
    name: str
    path: str
    passages: list[str]
    fingerprint: str  # of the passages' text, whatever files held them


def _read_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = read_utf8(path)
        _refuse_non_text(path, text)
        return [line.strip() for line in text.splitlines() if line.strip()]
    if suffix in JSONL_SUFFIXES:
        passages = []
        for lineno, obj in jsonl_rows(path):
            if "text" not in obj:
                raise DomixError(f"{path}:{lineno} has no 'text' field; each line must be an object like {{\"text\": \"...\"}}")
            text = str(obj["text"]).strip()
            if text:
                passages.append(text)
        return passages
    raise DomixError(f"corpus file {path} has an unsupported type {suffix or '(none)'}; use .txt (a passage a line) or .jsonl (a 'text' field)")


def _refuse_non_text(path: Path, text: str, limit: float = 0.05) -> None:
    """Refuse a file whose characters are mostly control codes (binary data saved as .txt): valid
    UTF-8 can still be binary, and a model trained on it learns nothing of a domain."""
    sample = text[:200_000]
    control = sum(1 for c in sample if unicodedata.category(c) in ("Cc", "Co", "Cn") and c not in "\n\r\t")
    if sample and control / len(sample) > limit:
        raise DomixError(f"{path} is not text: {100 * control / len(sample):.0f}% of its first {len(sample):,} characters "
                         "are control codes; give a text file with one passage a line")


def read_corpus(name: str, path: str | Path) -> Corpus:
    """Read a domain corpus, refusing a missing path or one without text."""
    path = Path(path)
    if not path.exists():
        raise DomixError(f"corpus of domain {name!r} not found: {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES | JSONL_SUFFIXES)
        if not files:
            raise DomixError(f"corpus folder {path} of domain {name!r} holds no .txt or .jsonl file")
    else:
        files = [path]
    passages = [p for f in files for p in _read_file(f)]
    if not passages:
        raise DomixError(f"corpus of domain {name!r} ({path}) has no text; give a file with one passage a line")
    digest = hashlib.sha256("\n".join(passages).encode("utf-8")).hexdigest()[:16]
    return Corpus(name=name, path=str(path), passages=passages, fingerprint=digest)


def tokenize_blocks(corpus: Corpus, tokenizer, seq_len: int, append_eos: bool) -> torch.Tensor:
    """Tokenize every passage, concatenate, and cut into blocks of ``seq_len`` tokens.

    The tail shorter than a block is dropped (as Hugging Face's run_mlm/run_clm do).
    ``append_eos`` ends each passage with the end-of-sequence token (causal LMs whose
    tokenizer does not add one), so passages do not run into each other.
    """
    eos = tokenizer.eos_token_id if append_eos else None
    ids: list[int] = []
    for start in range(0, len(corpus.passages), 1000):
        for row in tokenizer(corpus.passages[start : start + 1000])["input_ids"]:
            ids.extend(row)
            if eos is not None and (not row or row[-1] != eos):
                ids.append(eos)
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise DomixError(
            f"corpus of domain {corpus.name!r} has {len(ids)} tokens, too short for one sequence of "
            f"{seq_len}; give more text or a smaller --seq-len"
        )
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def split_heldout(
    blocks: torch.Tensor, fraction: float, max_blocks: int, seed: int, domain: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set aside a random held-out slice of blocks (at least one, at most ``max_blocks``)."""
    n = blocks.shape[0]
    k = min(max_blocks, max(1, round(n * fraction))) if fraction > 0 else 0
    if n - k < 1:
        raise DomixError(
            f"corpus of domain {domain!r} makes only {n} sequence(s), too few to hold one out and "
            "train on the rest; give more text or a smaller --seq-len"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    heldout = blocks[perm[:k].sort().values]
    train = blocks[perm[k:].sort().values]
    return train, heldout
