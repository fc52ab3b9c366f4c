"""Where text comes from: a user's path or dataset name resolved into rows of text (and labels).

Formats, by what the user gives:
- a ``.txt`` file (one passage a line; corpora only) or a ``.jsonl`` file: read here, streamed line by
  line, strictly as UTF-8, with errors that give the line or byte (datasets' json and text builders
  report a pyarrow row of a block, or replace undecodable bytes, which would train on mojibake);
- a ``.json`` file holding one JSON list of objects (LLM-Adapters' dataset files; instruction data and
  multiple-choice files only, see :func:`json_records`): read here whole, strictly as UTF-8;
- a ``.csv``, ``.tsv`` or ``.parquet`` file, a folder written by ``Dataset.save_to_disk``, or a dataset
  name (``NAME`` or ``NAME:CONFIG``, loaded by ``datasets.load_dataset`` where the hub is reachable):
  read through ``datasets``, whose Arrow tables are memory-mapped, so a source larger than memory streams;
- a folder of files: a corpus reads every file in sorted order; a task takes ``train``, ``dev`` and
  ``test`` files of any of the formats above.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from domix.console import quiet_third_party
from domix.errors import DomixError

TEXT_SUFFIXES = (".txt", ".text")
JSONL_SUFFIXES = (".jsonl", ".json")
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
ROW_SUFFIXES = JSONL_SUFFIXES + tuple(TABLE_SUFFIXES)  # files that hold rows with named columns
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # what save_to_disk writes
# split names domix uses, and the names datasets on the hub commonly use for them
SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "validation", "valid", "val"), "test": ("test",)}
CHUNK = 1000  # rows handed on at a time: bounds memory whatever the source's size
LIST_FIX = "write one JSON list of objects, or one JSON object a line"


@dataclass(frozen=True)
class Columns:
    """The column names a source's rows use for domix's fields (``--text-column`` and friends)."""

    text: str = "text"
    text_pair: str | None = None  # None: a "text_pair" column where there is one; a name: that column, required
    label: str = "label"

    def flags(self) -> str:
        return "--text-column, --text-pair-column, --label-column"


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in SAVED_DATASET_FILES)


def looks_like_dataset_name(text: str) -> bool:
    """``name``, ``owner/name`` or either with ``:config``: never a path with a file suffix or a ./ or / start."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?", text)) and Path(text).suffix.lower() not in (
        TEXT_SUFFIXES + ROW_SUFFIXES)


def load_table(source: str | Path, what: str):
    """A ``datasets`` Dataset or DatasetDict for a table file, a saved dataset folder, or a dataset name."""
    import datasets

    quiet_third_party()  # datasets' "Generating train split" bars, for library callers too
    path = Path(source)
    try:
        if path.is_file():
            return datasets.load_dataset(TABLE_SUFFIXES[path.suffix.lower()], data_files=str(path), split="train",
                                         **({"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}))
        if is_saved_dataset(path):
            return datasets.load_from_disk(str(path))
        name, _, config = str(source).partition(":")
        return datasets.load_dataset(name, config or None)
    except DomixError:
        raise
    except Exception as err:  # datasets and pyarrow raise many types; the user needs the first line of it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if not path.exists():
            raise DomixError(f"{what} {source} is neither a file or folder here nor a dataset datasets could load "
                             f"({first}); give a path, or a dataset name on a machine that reaches the hub") from None
        raise DomixError(f"{what} {source} could not be read as a dataset: {first}") from None


def pick_split(table, split: str | None, what: str, source: str | Path, hint: str):
    """One Dataset of a Dataset or DatasetDict: ``split`` (a domix name or the source's own), else train, else the
    only one; ``hint`` says how the user names another."""
    import datasets

    if isinstance(table, datasets.Dataset):
        return table
    names = list(table)
    wanted = [split] if split and split not in SPLIT_ALIASES else list(SPLIT_ALIASES.get(split or "train", ()))
    if split is None and len(names) == 1:
        wanted = names
    for name in wanted:
        if name in table:
            return table[name]
    raise DomixError(f"{what} {source} has no {split or 'train'} split (it has {names}); {hint}")


def require_columns(columns: list[str], needed: dict[str, str], what: str, source: str | Path) -> None:
    """Refuse a source that lacks a needed column, naming the columns it has and the flag that picks one."""
    for field, column in needed.items():
        if column not in columns:
            raise DomixError(f"{what} {source} has no {column!r} column (its columns: {columns}); "
                             f"name the {field} column with --{field.replace('_', '-')}-column")


def table_rows(dataset, columns: list[str]) -> Iterator[list[dict[str, Any]]]:
    """A Dataset's rows in chunks of dicts of ``columns``, read from its memory-mapped table."""
    for batch in dataset.select_columns(columns).iter(batch_size=CHUNK):
        keys = list(batch)
        yield [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


def label_names(dataset, column: str) -> list[str] | None:
    """The class names of a ClassLabel column (datasets stores the ids), else None."""
    feature = dataset.features.get(column)
    return list(feature.names) if getattr(feature, "names", None) else None


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a jsonl file, streamed; a line that is not a
    JSON object is refused with its line number."""
    for lineno, line in utf8_lines(Path(path)):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DomixError(f"{path}:{lineno} is not valid JSON ({err.msg}); write one JSON object a line") from None
        if not isinstance(row, dict):
            raise DomixError(f"{path}:{lineno} is not a JSON object; write one object a line")
        yield lineno, row


def json_list_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record number from 1, object) for every record of a file holding one JSON list of objects, read whole
    (one JSON value cannot be streamed with the standard library); a record that is not an object is refused
    with its number."""
    try:
        records = json.loads(utf8_text(Path(path)))
    except json.JSONDecodeError as err:
        raise DomixError(f"{path}:{err.lineno}:{err.colno} is not valid JSON ({err.msg}); {LIST_FIX}") from None
    if not isinstance(records, list):
        raise DomixError(f"{path} holds a JSON {_kind(records)}, not a list of records; {LIST_FIX}")
    for number, row in enumerate(records, 1):
        if not isinstance(row, dict):
            raise DomixError(f"{path} record {number} is a JSON {_kind(row)}, not an object; "
                             "each record of the list must be one object")
        yield number, row


def json_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for every record of a jsonl file or of a file holding one JSON list of objects (as
    LLM-Adapters distributes its data), told apart by the first character that is not white space (``[``: a
    list); ``where`` is "FILE:LINE" or "FILE record N", for messages."""
    path = Path(path)
    if _first_byte(path) == b"[":
        for number, row in json_list_rows(path):
            yield f"{path} record {number}", row
        return
    try:
        for lineno, row in jsonl_rows(path):
            yield f"{path}:{lineno}", row
    except DomixError:
        _refuse_one_value(path)
        raise


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            if chunk.lstrip():
                return chunk.lstrip()[:1]
    return b""


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _refuse_one_value(path: Path) -> None:
    """A jsonl read failed: if the whole file is one JSON value that is not a list (a pretty-printed object,
    a number), say that rather than what is wrong with its first line."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    if not isinstance(value, list):
        raise DomixError(f"{path} holds one JSON {_kind(value)}, not a list of records; {LIST_FIX}") from None


def text_lines(path: str | Path) -> Iterator[str]:
    """The lines of a text file, streamed (split as str.splitlines splits, so form feeds and U+2028 end lines too)."""
    for _, line in utf8_lines(Path(path)):
        yield from line.splitlines() or [""]


def utf8_text(path: Path) -> str:
    """The whole text of ``path``, decoded strictly as UTF-8: a byte that is not UTF-8 is refused with its offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DomixError(f"{path} is not UTF-8 text (byte {err.start} is 0x{raw[err.start]:02x}); "
                         "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) of ``path``, decoded strictly as UTF-8 one line at a time:
    a byte that is not UTF-8 is refused with its offset, never replaced."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DomixError(f"{path} is not UTF-8 text (byte {offset + err.start} is 0x{raw[err.start]:02x}); "
                                 "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            offset += len(raw)
            yield lineno, line.rstrip("\r\n")
