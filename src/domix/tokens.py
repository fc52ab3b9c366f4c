"""A corpus's token ids, tokenized once into a memory-mapped file, and blocks of them for training.

The ids are written as a flat array of uint16 (vocabularies under 65,536 tokens) or uint32 to
``$DOMIX_CACHE/tokens`` (default ``~/.cache/domix/tokens``), named by the corpus fingerprint, the
tokenizer's fingerprint and whether passages end with the end-of-sequence token: any run, sequence
length or method on the same text and tokenizer reads the same file. A batch reads only its rows
from the page cache, so a corpus larger than memory trains. (datasets' Arrow cache would hold the ids
as per-passage lists; cutting them into fixed blocks needs the flat stream this file is.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from domix.errors import DomixError

CACHE_ENV = "DOMIX_CACHE"


class Text(Protocol):
    """What is tokenized: a corpus (``domix.corpus.Corpus``) streams its passages and names its text."""

    path: str
    passages: int
    fingerprint: str

    def chunks(self) -> Iterator[list[str]]: ...


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "domix"
    return Path(root) / "tokens"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the ids: the fast tokenizer's full definition, else the vocabulary and class."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.eos_token_id, tokenizer.all_special_ids])
    return hashlib.sha256((spec + extra).encode("utf-8")).hexdigest()[:16]


def token_ids(corpus: Text, tokenizer, append_eos: bool) -> np.ndarray:
    """The corpus's token ids as a read-only memory-mapped array, tokenizing it on the first call."""
    key = f"{corpus.fingerprint}-{tokenizer_fingerprint(tokenizer)}-{'eos' if append_eos else 'plain'}"
    folder = cache_dir()
    data, info = folder / f"{key}.bin", folder / f"{key}.json"
    if not (data.is_file() and info.is_file()):
        _tokenize_to(corpus, tokenizer, append_eos, folder, key)
    meta = json.loads(info.read_text())
    if meta["tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])
    return np.memmap(data, dtype=meta["dtype"], mode="r", shape=(meta["tokens"],))


def _tokenize_to(corpus: Text, tokenizer, append_eos: bool, folder: Path, key: str) -> None:
    """Stream the corpus through the tokenizer into ``key``.bin, then write ``key``.json (its presence marks
    the file complete); both appear by rename, so a crash or a concurrent run never leaves half a cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    except OSError as err:
        raise DomixError(f"cannot write the token cache in {folder} ({err.strerror}); set {CACHE_ENV} to a writable folder") from None
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    eos = tokenizer.eos_token_id if append_eos else None
    total = 0
    try:
        with os.fdopen(handle, "wb") as f:
            for chunk in corpus.chunks():
                rows = tokenizer(chunk)["input_ids"]
                if eos is not None:
                    rows = [row if row and row[-1] == eos else row + [eos] for row in rows]
                flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=sum(map(len, rows)))
                f.write(flat.astype(dtype).tobytes())
                total += len(flat)
        os.replace(tmp_name, folder / f"{key}.bin")
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    meta = {"dtype": np.dtype(dtype).name, "tokens": total, "corpus": corpus.path, "fingerprint": corpus.fingerprint,
            "passages": corpus.passages, "tokenizer": getattr(tokenizer, "name_or_path", ""), "append_eos": append_eos}
    from domix import atomic

    atomic.write_json(folder / f"{key}.json", meta)


class TokenBlocks:
    """Rows of ``seq_len`` token ids drawn from one or more token streams, read only when indexed.

    Indexing (an int, a slice, a list or tensor of row numbers) gives a LongTensor, as indexing a
    (rows, seq_len) tensor would; ``take`` gives a TokenBlocks of a subset, ``concat`` joins several.
    """

    def __init__(self, tables: Sequence[np.ndarray], index: np.ndarray):
        self.tables = list(tables)  # each (blocks, seq_len)
        self.index = index  # (rows, 2): table, block
        self.seq_len = self.tables[0].shape[1] if self.tables else 0

    @classmethod
    def of_stream(cls, ids: np.ndarray, seq_len: int) -> "TokenBlocks":
        n = len(ids) // seq_len
        table = ids[: n * seq_len].reshape(n, seq_len)
        return cls([table], np.stack([np.zeros(n, dtype=np.int64), np.arange(n)], axis=1))

    @classmethod
    def of_tensor(cls, blocks: torch.Tensor) -> "TokenBlocks":
        return cls.of_stream(blocks.reshape(-1).numpy(), blocks.shape[1])

    @classmethod
    def concat(cls, parts: Sequence["TokenBlocks"]) -> "TokenBlocks":
        tables, index = [], []
        for part in parts:
            shift = len(tables)
            tables.extend(part.tables)
            index.append(part.index + np.array([shift, 0]))
        return cls(tables, np.concatenate(index))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.seq_len)

    def numel(self) -> int:
        return len(self.index) * self.seq_len

    def take(self, rows) -> "TokenBlocks":
        return TokenBlocks(self.tables, self.index[_positions(rows)])

    def __getitem__(self, rows) -> torch.Tensor:
        if isinstance(rows, (int, np.integer)):
            return self[[int(rows)]][0]
        picked = self.index[_positions(rows)]
        out = np.empty((len(picked), self.seq_len), dtype=np.int64)
        for t, table in enumerate(self.tables):
            mine = picked[:, 0] == t
            if mine.any():
                out[mine] = table[picked[mine, 1]]
        return torch.from_numpy(out)


Blocks = TokenBlocks | torch.Tensor  # what training and evaluation index rows of


def _positions(rows) -> np.ndarray | slice:
    if isinstance(rows, slice):
        return rows
    if isinstance(rows, torch.Tensor):
        rows = rows.numpy()
    return np.asarray(rows, dtype=np.int64).reshape(-1)
