"""Rewrite the committed records of one machine's runs without that machine's absolute paths.

Records written before domix named base models and folders as the user gave them held the absolute paths
of the machine that ran them: the project checkout (``/work/main/``), the data pack beside it
(``/work/shared/``) and temporary folders. This rewrites them in every text file under the given folders:
the checkout's paths become relative to the checkout (where every command of the project runs), the data
pack's become ``../shared/`` as the configs name it, and a temporary folder becomes ``<temporary folder>/``.

    python tools/relative_records.py benchmarks/results docs
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TEXT = {".json", ".jsonl", ".txt", ".log", ".md", ".yaml", ".yml", ".html", ".csv"}
RULES = [(re.compile(r"/work/main/"), ""), (re.compile(r"/work/main\b"), "."), (re.compile(r"/work/shared/"), "../shared/"),
         (re.compile(r"/tmp/(pytest-of-root/)?[A-Za-z0-9_.-]+(?=/)"), "<temporary folder>")]


def rewrite(text: str) -> str:
    for pattern, replacement in RULES:
        text = pattern.sub(replacement, text)
    return text


def main(folders: list[str]) -> int:
    changed = 0
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.suffix not in TEXT or not path.is_file():
                continue
            text = path.read_text(errors="strict")
            new = rewrite(text)
            if new != text:
                path.write_text(new)
                changed += 1
    print(f"rewrote {changed} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
