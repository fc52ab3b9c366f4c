"""Reading text inputs: strict UTF-8, and jsonl files (one JSON object a line, blank lines skipped),
with errors that name the file and the byte offset or line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from domix.errors import DomixError


def read_utf8(path: str | Path) -> str:
    """The text of ``path``, decoded as UTF-8 strictly: a byte that is not UTF-8 is refused, never replaced."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DomixError(f"{path} is not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}); "
                         "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of ``path``; a line that is not a JSON object is refused."""
    for lineno, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DomixError(f"{path}:{lineno} is not valid JSON ({err.msg}); write one JSON object a line") from None
        if not isinstance(row, dict):
            raise DomixError(f"{path}:{lineno} is not a JSON object; write one object a line")
        yield lineno, row
