"""The three systems side by side in one comparison, measured, beside what each paper leads one to expect.

For DoMIX, MixDA and MoDE (the rows of SYSTEMS a comparison ran): the pooled paired test macro-F1 difference against the
comparison's reference row and against lora_module (the task's own domain module as LoRA's start: the cheapest use of a
store), each with its 95% interval and reading as ``domix compare`` computes them (domix.comparison.stats); the trainable
share, fine-tuning peak memory and time per run, and the stage-1 time and peak memory of the store the row starts from
(domix.comparison.summary). Then each paper's own headline claims, quoted with where they are stated, from
benchmarks/published_gains.yaml (published figures, not measured here: other models, tasks and budgets).

    python benchmarks/systems_reading.py benchmarks/results/compare-dap-fair
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SYSTEMS = ("domix", "mixda", "mode")
CHEAPEST = "lora_module"  # the same store's cheapest use: the task's own module as LoRA's start
PUBLISHED = ROOT / "benchmarks" / "published_gains.yaml"


def measured(results: dict) -> list[dict]:
    """One entry per system that ran: its paired differences (against the reference and against CHEAPEST) and costs."""
    from domix.comparison.report import format_difference, verdict
    from domix.comparison.stats import paired, paired_of
    from domix.comparison.summary import summarise

    runs, tasks = results["runs"], results["tasks"]
    reference = paired_of(results).get("reference")
    rows = {row["method"]: row for row in summarise(results)}
    out = []
    for system in SYSTEMS:
        if system not in rows:
            continue
        against = {}
        for other in dict.fromkeys([reference, CHEAPEST]):
            if other is None or other == system or other not in rows:
                continue
            entry = paired(runs, system, other, tasks, "macro_f1")
            if entry is not None:
                against[other] = {"pooled": entry["pooled"], "text": f"{format_difference(entry['pooled'])}, {verdict(entry['pooled'])}"}
        row = rows[system]
        out.append({"system": system, "reference": reference, "macro_f1": row["avg_macro_f1_mean"], "against": against,
                    **{k: row.get(k) for k in ("trainable_percent", "ft_peak_memory_mb", "ft_time_s", "dap_time_s",
                                               "dap_peak_memory_mb")}})
    return out


def claims(path: Path = PUBLISHED) -> dict[str, list[dict]]:
    """Each system's published headline claims (benchmarks/published_gains.yaml)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    return {system: data.get(system, {}).get("claims", []) for system in SYSTEMS}


def _number(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(folder: Path, results: dict, published: dict[str, list[dict]]) -> str:
    entries = measured(results)
    reference = entries[0]["reference"] if entries else None
    lines = [f"Measured in `{folder}` (test macro-F1 ×100, mean over its tasks {', '.join(results['tasks'])}; paired "
             f"differences pooled over tasks and seeds, 95% interval, pairs above):", "",
             f"| system | macro-F1 | vs {reference} | vs {CHEAPEST} | trainable % | fine-tuning peak MB | fine-tuning s/run | "
             "stage 1 h | stage 1 peak MB |", "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        cell = {o: ("reference" if o == e["system"] else e["against"][o]["text"] if o in e["against"] else "-")
                for o in (reference, CHEAPEST)}
        dap_h = None if e["dap_time_s"] is None else e["dap_time_s"] / 3600
        lines.append(f"| {e['system']} | {_number(100 * e['macro_f1'] if e['macro_f1'] is not None else None, '.1f')} | "
                     f"{cell[reference]} | {cell[CHEAPEST]} | {_number(e['trainable_percent'], '.2f')} | "
                     f"{_number(e['ft_peak_memory_mb'], '.0f')} | {_number(e['ft_time_s'], '.0f')} | {_number(dap_h, '.2f')} | "
                     f"{_number(e['dap_peak_memory_mb'], '.0f')} |")
    missing = [s for s in SYSTEMS if s not in {e["system"] for e in entries}]
    if missing:
        lines += ["", f"Not in this comparison: {', '.join(missing)}."]
    lines += ["", "What each paper leads one to expect (its own claims, quoted; other models, tasks and budgets, not measured "
                  "here: `benchmarks/published_gains.yaml` has the figures and sources):", ""]
    for system in SYSTEMS:
        for claim in published.get(system, []):
            mark = " (not confirmed from the paper itself)" if claim.get("unverified") else ""
            lines.append(f"- {system}: {claim['claim']} ({claim['where']}){mark}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a comparison's out folder with results.json")
    parser.add_argument("--published", default=str(PUBLISHED), help="the published claims (YAML)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    text = markdown(folder, json.loads((folder / "results.json").read_text()), claims(Path(args.published)))
    print(text)
    return text


if __name__ == "__main__":
    main()
