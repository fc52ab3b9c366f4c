"""Paired differences between a comparison's rows and a reference row, with bootstrap intervals.

Two runs pair when they share a task and a seed (same training sample, same test examples). Per task, the
difference is the mean over seeds of (row's test score − reference's); its 95% interval comes from a
bootstrap that resamples both sources of noise at once: the seeds (with replacement) and the test examples
(with replacement, the same examples for both runs of a pair), the score recomputed on each resample from
the runs' recorded predictions. Pooled over tasks, the difference is the mean of the tasks' differences,
each task resampled on its own. A difference whose interval covers 0 is within noise. Runs recorded
without their predictions (before domix kept them) are resampled over seeds only, and say so.

No library computes this: scipy's ``bootstrap`` resamples one level (examples or seeds), not seeds and the
examples within them together, and it recomputes no macro-F1 from predictions.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np

METRICS = ("macro_f1", "accuracy")
RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the bootstrap's own seed: the same records give the same intervals


def scores(predicted: np.ndarray, gold: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of each row of ``predicted`` against the same row of ``gold`` (both (resamples, examples)):
    accuracy, or macro-F1 over the labels that occur in that row's gold or predictions (as domix.metrics)."""
    if metric == "accuracy":
        return (predicted == gold).mean(axis=1)
    total = np.zeros(predicted.shape[0])
    present = np.zeros(predicted.shape[0])
    for c in np.union1d(np.unique(predicted), np.unique(gold)):
        p, g = predicted == c, gold == c
        tp, fp, fn = (p & g).sum(1), (p & ~g).sum(1), (~p & g).sum(1)
        denominator = 2 * tp + fp + fn
        occurs = denominator > 0
        total += np.where(occurs, 2 * tp / np.maximum(denominator, 1), 0.0)
        present += occurs
    return total / np.maximum(present, 1)


def _pairs(runs: list[dict], method: str, reference: str, task: str) -> list[tuple[dict, dict]]:
    """(row's run, reference's run) of ``task`` at each seed both have (a row with domain orders: each order's run)."""
    ref = {r["seed"]: r for r in runs if r["method"] == reference and r["task"] == task}
    return [(r, ref[r["seed"]]) for r in runs if r["method"] == method and r["task"] == task and r["seed"] in ref]


def _with_predictions(pairs: list[tuple[dict, dict]]) -> bool:
    """Whether every run of ``pairs`` kept its test predictions, on one and the same test sample."""
    kept = [r.get("test_predictions") for pair in pairs for r in pair]
    return all(kept) and all(k["gold"] == kept[0]["gold"] for k in kept)


def task_resamples(pairs: list[tuple[dict, dict]], metric: str, rng: np.random.Generator, resamples: int = RESAMPLES) -> tuple[np.ndarray, bool]:
    """The bootstrap distribution of one task's mean paired difference, and whether the examples were resampled."""
    k = len(pairs)
    seeds = rng.integers(0, k, size=(resamples, k))
    if _with_predictions(pairs):
        gold = np.asarray(pairs[0][0]["test_predictions"]["gold"])
        examples = rng.integers(0, len(gold), size=(resamples, len(gold)))
        g = gold[examples]
        diffs = np.stack([scores(np.asarray(a["test_predictions"]["predicted"])[examples], g, metric)
                          - scores(np.asarray(b["test_predictions"]["predicted"])[examples], g, metric) for a, b in pairs], axis=1)
        return np.take_along_axis(diffs, seeds, axis=1).mean(axis=1), True
    if k < 2:  # one pair and no predictions: nothing to resample, so no interval
        return None, False
    recorded = np.asarray([a["test"][metric] - b["test"][metric] for a, b in pairs])
    return recorded[seeds].mean(axis=1), False


def _entry(point: float, distribution: np.ndarray | None, positive: int, n: int, examples: bool) -> dict:
    """One difference: its mean, interval (None where nothing could be resampled: one seed without predictions),
    pairs above the reference, pairs, and whether the interval covers 0 (None without an interval)."""
    if distribution is None:
        return {"mean": float(point), "low": None, "high": None, "positive": positive, "pairs": n, "within_noise": None,
                "resampled": "nothing (one seed, no recorded predictions)"}
    low, high = np.quantile(distribution, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"mean": float(point), "low": float(low), "high": float(high), "positive": positive, "pairs": n,
            "within_noise": bool(low <= 0 <= high), "resampled": "seeds and test examples" if examples else "seeds only"}


def paired(runs: list[dict], method: str, reference: str, tasks: list[str], metric: str, resamples: int = RESAMPLES) -> dict | None:
    """``method`` against ``reference`` on ``metric``: per task and pooled over the tasks both ran, the mean paired
    difference (fractions, as recorded), its interval, and how many pairs came out positive; None without pairs."""
    rng = np.random.default_rng(SEED)
    per_task, distributions, all_examples = {}, [], True
    for task in tasks:
        pairs = _pairs(runs, method, reference, task)
        if not pairs:
            continue
        differences = [a["test"][metric] - b["test"][metric] for a, b in pairs]
        distribution, examples = task_resamples(pairs, metric, rng, resamples)
        per_task[task] = _entry(statistics.fmean(differences), distribution, sum(d > 0 for d in differences), len(pairs), examples)
        distributions.append(distribution)
        all_examples &= examples
    if not per_task:
        return None
    whole = None if any(d is None for d in distributions) else np.mean(distributions, axis=0)
    pooled = _entry(statistics.fmean(e["mean"] for e in per_task.values()), whole,
                    sum(e["positive"] for e in per_task.values()), sum(e["pairs"] for e in per_task.values()), all_examples)
    return {"tasks": per_task, "pooled": pooled}


def reference_row(results: dict, named: str | None) -> dict | None:
    """The row the others are compared with: the one the config names, else the row without domain pre-training
    with the best mean dev score (its runs' kept epochs, averaged per task, then over the tasks): a choice made on dev,
    never on test. None where no such row has runs."""
    from domix.methods.registry import COMPARE

    runs = results.get("runs") or []
    with_runs = [m for m in results.get("methods") or [] if any(r["method"] == m for r in runs)]
    if named is not None:
        return {"method": named, "why": "named in the comparison's config"} if named in with_runs else None
    candidates = [m for m in with_runs if m in COMPARE and COMPARE[m].pretrain is None]
    if not candidates:
        return None
    metric = (results.get("search") or {}).get("metric", "macro_f1")

    def dev(method: str) -> float:
        by_task = defaultdict(list)
        for r in runs:
            if r["method"] == method:
                by_task[r["task"]].append(r["dev"][metric])
        return statistics.fmean(statistics.fmean(v) for v in by_task.values())

    best = max(candidates, key=dev)
    return {"method": best, "why": f"the best mean dev {metric} among the rows without domain pre-training ({', '.join(candidates)})",
            "dev": {m: dev(m) for m in candidates}}


def paired_of(results: dict) -> dict:
    """A comparison's paired table: the one its results.json holds, else (results written before it did) computed from
    its runs against its reference row; {} without a reference."""
    if results.get("paired"):
        return results["paired"]
    reference = reference_row(results, (results.get("settings") or {}).get("reference"))
    return paired_table(results["runs"], reference, results["tasks"], results["methods"]) if reference else {}


def paired_table(runs: list[dict], reference: dict, tasks: list[str], methods: list[str]) -> dict:
    """Every other row against the reference, per metric: {"reference", "why", "level", "resamples", metric: {row: paired}}."""
    out = {**reference, "reference": reference["method"], "level": LEVEL, "resamples": RESAMPLES}
    del out["method"]
    for metric in METRICS:
        out[metric] = {m: p for m in methods if m != reference["method"]
                       for p in [paired(runs, m, reference["method"], tasks, metric)] if p is not None}
    return out


def shuffle_test(groups: list[tuple[list, list]], permutations: int = RESAMPLES, seed: int = SEED) -> dict:
    """Does a row know more than its answer distribution? ``groups``: (predicted, gold) per benchmark (an answer of None is
    no answer, never right). Each group's predictions are permuted among its questions (the same answers, each given to
    another question), the mean of the groups' accuracies recomputed: what the row's answer distribution alone scores.
    Returns the observed mean accuracy, the shuffled mean and 95% range, and the one-sided p of the observed score
    under shuffling ((1 + shuffles at least as high) / (1 + permutations)).

    scipy.stats.permutation_test shuffles one sample's labels; this keeps each group's answer counts and averages groups.
    """
    rng = np.random.default_rng(seed)
    observed, shuffled = [], np.zeros(permutations)
    for predicted, gold in groups:
        p = np.array([-1 if x is None else int(x) for x in predicted])
        g = np.asarray(gold, dtype=int)
        observed.append(float((p == g).mean()))
        order = np.argsort(rng.random((permutations, len(p))), axis=1)  # one permutation of the questions per row
        shuffled += (p[order] == g).mean(axis=1)
    shuffled /= len(groups)
    mean = float(np.mean(observed))
    return {"observed": mean, "shuffled": float(shuffled.mean()),
            "shuffled_range": [float(np.percentile(shuffled, 2.5)), float(np.percentile(shuffled, 97.5))],
            "p": float((1 + (shuffled >= mean - 1e-12).sum()) / (1 + permutations))}
