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


def test_each_systems_place_is_its_rank_by_mean_test_macro_f1_and_its_paired_difference_from_the_reference():
    """Three rows over two tasks and three seeds, their scores made by hand: mixda's mean and its paired difference from
    lora (the named reference) are the hand-computed ones, domix ranks first, and mode, which has no row, says so."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import readme_results
    finally:
        sys.path.remove(str(ROOT / "tools"))
    score = {"lora": 0.50, "domix": 0.56, "mixda": 0.47}  # seed s on task t adds 0.01·s (+0.02 on t2)
    runs = [{"method": m, "task": t, "seed": s, "order": None, "test": {"macro_f1": base + 0.01 * s + (0.02 if t == "t2" else 0),
                                                                          "accuracy": 0.0}}
            for m, base in score.items() for t in ("t1", "t2") for s in (1, 2, 3)]
    results = {"settings": {"reference": "lora"}, "methods": ["lora", "domix", "mixda"], "tasks": ["t1", "t2"], "runs": runs}
    lines = readme_results.places(results, "benchmarks/results/x", "a comparison")
    assert lines[0].startswith("Measured place of each system in a comparison (`benchmarks/results/x`; ")
    assert "paired against lora" in lines[0]
    # mixda: t1 0.47 + 0.02 (the seeds' mean), t2 0.51, mean 0.50, 3 points below lora at every pair; domix 0.59
    assert lines[2] == "- `domix`: 59.0, 1 of 3 rows; +6.0 [+6.0, +6.0] 6/6 against lora, above (seeds only)."
    assert lines[4].startswith("- `mode`: no row in this comparison yet.")
    assert lines[3].startswith("- `mixda`: 50.0, 3 of 3 rows; -3.0 [-3.0, -3.0] 0/6 against lora, below")


def test_the_fair_reading_quotes_the_choices_the_cost_and_the_defaults_of_a_finished_search(tmp_path, tiny_llama, corpora, task,
                                                                                           monkeypatch):
    """docs/results.md's generated reading on a finished comparison with a search (a tiny one, in a stand-in project root):
    its table, each row's choice with every candidate's dev mean as results.json holds them, protocol_cost's table and
    default_choice's, each as those scripts print them."""
    import json

    import yaml

    from conftest import write_compare_config

    from domix.comparison.config import CompareConfig
    from domix.comparison.run import compare

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import readme_results
    finally:
        sys.path.remove(str(ROOT / "tools"))
    root = tmp_path / "root"
    (root / "configs").mkdir(parents=True)
    fair = write_compare_config(root / "configs" / "compare-dap-fair.yaml", tiny_llama, corpora, task, methods=["head", "lora"],
                                seeds=[3, 4, 5], search={"seeds": [1, 2], "space": {"lr": [1e-3, 2e-2]}})
    settings = yaml.safe_load(fair.read_text())
    fair.write_text(yaml.safe_dump({**settings, "out": str(root / "benchmarks" / "results" / "compare-dap-fair")}))
    write_compare_config(root / "configs" / "compare-scierc-defaults.yaml", tiny_llama, corpora, task, methods=["head", "lora"])
    compare(CompareConfig.from_yaml(fair), in_process=True)
    monkeypatch.setattr(readme_results, "ROOT", root)
    text = readme_results.generate_reading()
    results = json.loads((root / "benchmarks" / "results" / "compare-dap-fair" / "results.json").read_text())
    for choice in results["search"]["choices"]:
        cells = [f"{c['label']}: " + (f"**{100 * c['mean']:.1f}**" if c["label"] == choice["chosen"] else f"{100 * c['mean']:.1f}")
                 for c in choice["candidates"]]
        assert f"| {choice['method']} | {choice['task']} | " + " | ".join(cells) + f" | {choice['chosen']} |" in text
    assert "| head | topics | " in text and "| lora |" in text
    assert "selection     topics" in text and "by medians" in text  # protocol_cost's table
    assert "<- across tasks" in text and "without a search (--defaults' settings): {'lr': 0.005}" in text  # default_choice's
    assert text.startswith(readme_results.READING_START) and text.endswith(readme_results.READING_END)
