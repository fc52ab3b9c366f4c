"""The commonsense comparison's samples of the data pack's LLM-Adapters files, drawn once and shipped in data/commonsense/.

    python benchmarks/commonsense_data.py                 # writes data/commonsense/ (refuses to change a file there)
    python benchmarks/commonsense_data.py --check         # exit 1 unless data/commonsense/ is what these settings draw
    python benchmarks/commonsense_data.py --train-sample 10000 --adapter-sample 900 --test-sample 3270 \
        --out runs/commonsense-8b/data                    # the published scale's samples (configs/compare-commonsense-8b.yaml)

The comparison (configs/compare-commonsense.yaml) reads these files as they are, so a fresh clone runs it without the
data pack. What is drawn (deterministic in the settings; each set shuffled once, by its own seeded permutation):

- ``mixture.json``: ``train_sample`` records of the training sets in proportion to their sizes (largest remainder):
  what every row trains on;
- ``adapter-<name>.json``: ``adapter_sample`` records of each adapter's sets, in proportion, taken after the mixture's
  in the same permutations, so that no record is in both; ``domain-<name>.txt``: the same records as text (instruction,
  input and output, a record a line), a domain of a stage-1 store (MoDE's experts);
- ``test-<bench>.json``: ``test_sample`` records of each benchmark's test set (all of a smaller one);
- ``samples.json``: the settings and, per file, how many records of how many each set gave.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from domix import atomic  # noqa: E402
from domix.errors import DomixError  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "commonsense"  # NAME/train.json and NAME/test.json as LLM-Adapters distributes them
OUT = ROOT / "data" / "commonsense"
# the scaled LLM-Adapters / DoRA commonsense setting a 2-core CPU trains: 4 of the published 8 training sets (those in
# the pack), an adapter per set group, 5 benchmarks; 1,000 mixture records of 17,754, 300 per adapter, 200 per benchmark
SETTINGS = {"train_sets": ["boolq", "arc_e", "arc_c", "obqa"],
            "adapters": {"boolq": ["boolq"], "arc": ["arc_e", "arc_c"], "obqa": ["obqa"]},
            "benchmarks": ["boolq", "piqa", "arc_e", "arc_c", "obqa"],
            "train_sample": 1000, "adapter_sample": 300, "test_sample": 200, "seed": 0}


def read_records(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DomixError(f"{path} cannot be read as JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(records, list) or not records:
        raise DomixError(f"{path} must hold a JSON list of records, as LLM-Adapters distributes them")
    return records


def shares(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """``total`` split over the sets in proportion to ``sizes`` (largest remainder, so the parts add up)."""
    whole = sum(sizes.values())
    exact = {name: total * size / whole for name, size in sizes.items()}
    parts = {name: int(value) for name, value in exact.items()}
    for name in sorted(exact, key=lambda n: parts[n] - exact[n])[: total - sum(parts.values())]:
        parts[name] += 1
    return parts


def draw_samples(data: Path, train_sets: list[str], adapters: dict[str, list[str]], benchmarks: list[str], train_sample: int,
                 adapter_sample: int, test_sample: int, seed: int) -> dict[str, dict]:
    """Every sample as {file name: {"records": [...], "from": {set: [taken, of]}}}; deterministic in the arguments."""
    sets = list(dict.fromkeys([*train_sets, *(s for v in adapters.values() for s in v)]))
    train = {name: read_records(data / name / "train.json") for name in sets}
    order = {}  # one seeded permutation per training set: the mixture takes its front, the adapters what follows
    for name, records in train.items():
        order[name] = list(range(len(records)))
        random.Random(f"{seed}:train:{name}").shuffle(order[name])
    used = dict.fromkeys(sets, 0)

    def take(name: str, k: int, what: str) -> list[int]:
        if used[name] + k > len(train[name]):
            raise DomixError(f"{name}/train.json holds {len(train[name])} records, too few for {what} ({k} more after "
                             f"{used[name]} taken); lower train_sample or adapter_sample")
        picked = sorted(order[name][used[name] : used[name] + k])
        used[name] += k
        return picked

    def sample(names: list[str], total: int, what: str) -> dict:
        if total > sum(len(train[n]) for n in names):
            raise DomixError(f"{what} of {total} records is more than {', '.join(names)} hold ({sum(len(train[n]) for n in names)})")
        parts = shares(total, {n: len(train[n]) for n in names})
        records, counts = [], {}
        for name in names:
            records += [train[name][i] for i in take(name, parts[name], what)]
            counts[name] = [parts[name], len(train[name])]
        return {"records": records, "from": counts}

    samples = {"mixture.json": sample(train_sets, train_sample, "the mixture sample")}
    for adapter, names in adapters.items():
        samples[f"adapter-{adapter}.json"] = sample(names, adapter_sample, f"adapter {adapter}'s sample")
        # the same records as a domain's text for a stage-1 store: instruction, input and output, a record a line
        samples[f"domain-{adapter}.txt"] = {"records": [" ".join(" ".join(str(r.get(k) or "") for k in ("instruction", "input", "output"))
                                                                 .split()) for r in samples[f"adapter-{adapter}.json"]["records"]],
                                            "from": samples[f"adapter-{adapter}.json"]["from"]}
    for bench in benchmarks:
        records = read_records(data / bench / "test.json")
        k = min(test_sample, len(records))
        picked = sorted(random.Random(f"{seed}:test:{bench}").sample(range(len(records)), k))
        samples[f"test-{bench}.json"] = {"records": [records[i] for i in picked], "from": {bench: [k, len(records)]}}
    return samples


def sample_text(name: str, sample: dict) -> str:
    """A sample's file as written: a record a line (a domain's text), else a JSON list."""
    return ("\n".join(sample["records"]) if name.endswith(".txt") else json.dumps(sample["records"], indent=2, ensure_ascii=False)) + "\n"


def write_samples(folder: Path, samples: dict[str, dict], settings: dict | None = None, check: bool = False) -> list[str]:
    """Write the samples not on disk yet and, with ``settings``, samples.json; returns the files that differed or were
    missing (``check``: writes nothing). A file that holds another sample is refused: runs trained on it would no longer
    match."""
    files = {name: sample_text(name, s) for name, s in samples.items()}
    if settings is not None:
        files["samples.json"] = json.dumps({"settings": settings, "from": {n: s["from"] for n, s in samples.items()}}, indent=2) + "\n"
    changed = []
    for name, text in files.items():
        path = folder / name
        if path.is_file() and path.read_text() == text:
            continue
        changed.append(name)
        if check:
            continue
        if path.is_file():
            raise DomixError(f"{path} holds another sample than these settings draw (the sizes, seed, data or sets changed); "
                             f"write into another folder, or delete {folder} to start over")
        atomic.write_text(path, text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="the data pack's commonsense folder (NAME/train.json, NAME/test.json)")
    parser.add_argument("--out", default=str(OUT), help="where the samples go")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 unless --out holds what is drawn")
    for size in ("train_sample", "adapter_sample", "test_sample"):
        parser.add_argument("--" + size.replace("_", "-"), type=int, default=SETTINGS[size], help=f"(default {SETTINGS[size]})")
    args = parser.parse_args(argv)
    settings = {**SETTINGS, **{k: getattr(args, k) for k in ("train_sample", "adapter_sample", "test_sample")}}
    try:
        if min(settings[k] for k in ("train_sample", "adapter_sample", "test_sample")) < 1:
            raise DomixError("--train-sample, --adapter-sample and --test-sample must be at least 1")
        samples = draw_samples(Path(args.data), **settings)
        changed = write_samples(Path(args.out), samples, settings, check=args.check)
    except DomixError as err:
        print(f"commonsense_data: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"commonsense_data: {args.out} {'differs in ' + ', '.join(changed) if changed else 'holds the samples drawn'}")
        return 1 if changed else 0
    print(f"commonsense_data: {len(changed)} file(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
