"""Reading jsonl files: one JSON object a line, blank lines skipped, errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from domix.errors import DomixError


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of ``path``; a line that is not a JSON object is refused."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DomixError(f"{path}:{lineno} is not valid JSON ({err.msg}); write one JSON object a line") from None
            if not isinstance(row, dict):
                raise DomixError(f"{path}:{lineno} is not a JSON object; write one object a line")
            yield lineno, row
