"""The README's results block is what the committed records give (tools/readme_results.py), never typed by hand."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_results_are_generated_from_the_committed_records():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_results.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_readme_is_short_and_links_pages_that_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    import re

    for page in set(re.findall(r"`((?:docs|benchmarks)/[\w./-]+\.md)`", text)) | {"LICENSE", "CITATION.cff"}:
        assert (ROOT / page).is_file(), page
