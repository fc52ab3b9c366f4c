"""Write a general-domain corpus for the reference comparison and the demo: English prose from the
Python reference manual that ships with every Python (``pydoc_data.topics``), a paragraph a line.

None of the three domains (restaurant reviews, biomedical abstracts, CS papers) is about it, and it
needs no download. MixDA's retention loss trains on it; retention scores are measured on it.

    python benchmarks/general_corpus.py .cache/general.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydoc_data.topics import topics


def paragraphs() -> list[str]:
    """Prose paragraphs of at least 8 words; code samples and tables left out."""
    out = []
    for text in topics.values():
        for block in text.split("\n\n"):
            paragraph = re.sub(r"\s+", " ", block).strip()
            letters = sum(c.isalpha() or c.isspace() for c in paragraph)
            if len(paragraph.split()) >= 8 and not paragraph.startswith((">>>", "...")) and letters > 0.85 * len(paragraph):
                out.append(paragraph)
    return list(dict.fromkeys(out))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/general_corpus.py OUT.txt")
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = paragraphs()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}: {len(lines)} paragraphs, {sum(len(p.split()) for p in lines):,} words")


if __name__ == "__main__":
    main()
