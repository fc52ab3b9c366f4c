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


def test_domix_is_stated_against_the_reference_and_lora_module_with_the_numbers_of_the_paired_table():
    """The sentences under a results table carry the same pooled difference and interval as compare's own statistics
    (the reference's from the table results.json holds)."""
    import json

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import readme_results
    finally:
        sys.path.remove(str(ROOT / "tools"))
    results = json.loads((ROOT / "benchmarks" / "results" / "compare-dap" / "results.json").read_text())
    lines = readme_results.stated(results, results["paired"]["reference"])
    pooled = results["paired"]["macro_f1"]["domix"]["pooled"]
    assert lines[0].startswith(f"- domix against {results['paired']['reference']} (the reference)")
    assert f"{100 * pooled['mean']:+.1f} macro-F1 points (95% interval {100 * pooled['low']:+.1f} to {100 * pooled['high']:+.1f}; " \
           f"{pooled['positive']} of {pooled['pairs']} pairs above)" in lines[0]
    assert lines[1].startswith("- domix against lora_module, pooled over the tasks: ")
