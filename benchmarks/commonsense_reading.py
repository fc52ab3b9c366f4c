"""What the commonsense comparison shows beyond its score table: each row's answers against what their distribution
alone scores, the floor the training prior sets, BoolQ apart.

    python benchmarks/commonsense_reading.py benchmarks/results/compare-commonsense     # --data data/commonsense

Reads OUT/results.json (``domix compare configs/compare-commonsense.yaml``: a run per row, seed and benchmark, each
question's answers kept) and the samples it was run on (data/commonsense/: the training mixture set by set, the test
records), writes OUT/reading.md and prints it.

- **Floor**: per benchmark, the answer most frequent among the mixture's records of that set, given to every test
  question (a benchmark with no training records: chance, 1 / its number of answers); it never reads a test label.
- **Shuffle test** (domix.comparison.stats.shuffle_test): a row's own answers permuted among each benchmark's questions
  (each of its runs apart): what its answer distribution alone scores; p, the share of shuffles scoring at least what
  the row scored. At p >= 0.05 the row shows **no signal**: nothing it answers depends on the question beyond how often
  it gives each answer.
- **BoolQ apart**: these files give BoolQ's question without the passage it asks about, so its score is the share of
  the answer a row gives most: reported apart, with the shares of each answer, and left out of the averages above.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from domix import atomic  # noqa: E402
from domix.comparison.stats import RESAMPLES, shuffle_test  # noqa: E402
from domix.comparison.summary import SIGNIFICANCE  # noqa: E402  (the reports' one threshold of "no signal")
from domix.errors import DomixError  # noqa: E402

APART = "boolq"  # BoolQ's question without its passage: a row's score is the share of one answer it gives
# what a row answered, per protocol and metric: the run's key and the answers' key in it
ANSWERS = {"loglikelihood: acc": ("test_predictions", "predicted"), "loglikelihood: acc_norm": ("test_predictions", "predicted_norm"),
           "generate: acc": ("generate_predictions", "predicted")}


def _json(path: Path):
    if not path.is_file():
        raise DomixError(f"{path} does not exist; give the comparison's out folder and the samples it ran on (--data)")
    return json.loads(path.read_text())


def prior_floor(data: Path, benchmarks: list[str]) -> dict[str, dict]:
    """Per benchmark: the training prior's answer and its test accuracy, or chance where the mixture has no such set."""
    mixture, at, by_set = _json(data / "mixture.json"), 0, {}
    for name, (taken, _) in _json(data / "samples.json")["from"]["mixture.json"].items():  # the records come set by set
        by_set[name] = mixture[at : at + taken]
        at += taken
    return floor_of(by_set, {bench: _json(data / f"test-{bench}.json") for bench in benchmarks})


def floor_of(by_set: dict[str, list[dict]], tests: dict[str, list[dict]]) -> dict[str, dict]:
    """Per benchmark of ``tests``: the answer most frequent among the training records of its set (``by_set``) and its
    accuracy on the test records, or chance (1 / its number of answers) where it has no training records."""
    out = {}
    for bench, records in tests.items():
        answers = [r["answer"] for r in by_set.get(bench, [])]
        if answers:
            prior = max(sorted(set(answers)), key=answers.count)
            out[bench] = {"answer": prior, "accuracy": sum(r["answer"] == prior for r in records) / len(records), "from": "training prior"}
        else:
            choices = len({r["answer"] for r in records})
            out[bench] = {"answer": None, "accuracy": 1 / choices, "from": f"chance (no training records; {choices} answers)"}
    return out


def signal(results: dict, floor: dict[str, dict]) -> dict:
    """Per row and protocol: the shuffle test over the benchmarks but BoolQ (each run's answers a group), the floor's mean,
    the reading; and BoolQ's accuracy and shares of each answer, over the row's runs."""
    benchmarks = results["tasks"]
    kept = [b for b in benchmarks if b != APART]
    out: dict = {}
    for row in results["methods"]:
        runs = [r for r in results["runs"] if r["method"] == row]
        for name, (source, key) in ANSWERS.items():
            own = [(r["task"], r[source]) for r in runs if r.get(source) and key in r[source]]
            groups = [(kept_[key], kept_["gold"]) for task, kept_ in own if task in kept]
            if not groups:
                continue
            test = shuffle_test(groups)
            floor_mean = sum(floor[b]["accuracy"] for b in kept) / len(kept)
            reading = ("no signal" if test["p"] >= SIGNIFICANCE else
                       "above its answer distribution, " + ("above" if test["observed"] > floor_mean else "not above") + " the floor")
            entry = {**test, "floor": floor_mean, "reading": reading, "runs": len({r["seed"] for r in runs})}
            apart = [kept_ for task, kept_ in own if task == APART]
            if apart:
                answers = [a for k in apart for a in k[key]]
                gold = [g for k in apart for g in k["gold"]]
                entry[APART] = {"accuracy": sum(a == g for a, g in zip(answers, gold)) / len(answers),
                                "answers": {str(a): answers.count(a) / len(answers) for a in sorted(set(answers), key=str)}}
            out.setdefault(row, {})[name] = entry
    return out


def reading(results: dict, data: Path) -> str:
    benchmarks = results["tasks"]
    kept = [b for b in benchmarks if b != APART]
    floor = prior_floor(data, benchmarks)
    shown = signal(results, floor)
    lines = ["# What the commonsense comparison shows", "",
             f"Over {', '.join(kept)} (BoolQ apart, below). **Floor**: each benchmark's answer most frequent in the training "
             "mixture given to every question (" + "; ".join(f"{b}: {f['from']}" + (f" '{f['answer']}'" if f["answer"] else "")
                                                              for b, f in floor.items() if b in kept)
             + "), averaged. **Shuffled**: the row's own answers permuted among each benchmark's questions, each run apart "
             f"({RESAMPLES:,} permutations): what its answer distribution scores without knowing which question gets which. "
             f"**p**: the share of shuffles scoring at least the row's accuracy; at p >= {SIGNIFICANCE} the row shows **no "
             "signal**. Accuracy: the mean over the row's runs (seeds) and the benchmarks.", "",
             "| row | protocol: metric | runs | accuracy | floor | shuffled (95% range) | p | reading |",
             "|---|---|---|---|---|---|---|---|"]
    entries = [(row, name, e) for row, by_name in shown.items() for name, e in by_name.items()]
    for row, name, e in entries:
        lo, hi = e["shuffled_range"]
        lines.append(f"| {row} | {name} | {e['runs']} | {100 * e['observed']:.1f} | {100 * e['floor']:.1f} | "
                     f"{100 * e['shuffled']:.1f} ({100 * lo:.1f}-{100 * hi:.1f}) | {e['p']:.3f} | {e['reading']} |")
    quiet = sorted({row for row, _, e in entries if e["reading"] == "no signal"})
    if quiet:
        lines += ["", f"No signal in at least one protocol: {', '.join(quiet)}."]
    if any(APART in e for _, _, e in entries):
        lines += ["", "**BoolQ apart.** These files give BoolQ's question without the passage it asks about, so no row can "
                      "read the answer: its accuracy follows from how often it gives each answer. Per row: accuracy, and the "
                      "share of its answers by answer index (None: no answer keyword).", "",
                  "| row | protocol: metric | accuracy | answers given |", "|---|---|---|---|"]
        for row, name, e in entries:
            if APART in e:
                given = ", ".join(f"{a}: {100 * share:.0f}%" for a, share in e[APART]["answers"].items())
                lines.append(f"| {row} | {name} | {100 * e[APART]['accuracy']:.1f} | {given} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the comparison's out folder (its results.json)")
    parser.add_argument("--data", default=str(ROOT / "data" / "commonsense"), help="the samples it ran on")
    args = parser.parse_args(argv)
    try:
        text = reading(_json(Path(args.out) / "results.json"), Path(args.data))
    except DomixError as err:
        print(f"commonsense_reading: {err}", file=sys.stderr)
        return 2
    atomic.write_text(Path(args.out) / "reading.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
