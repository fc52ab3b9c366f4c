"""Equal tuning in a comparison: each method's configurations, declared before any run, chosen on dev.

A comparison's ``search`` section gives every method the same number of configurations per task (its
budget): one grid for all (``space``, the product of its lists), or a method's own grid over its own knobs
(``methods``), never of more or fewer points. Each configuration trains at the selection ``seeds`` in
runs that never read the test split (``score_test: false``); per task, the configuration with the best
mean dev score over those seeds is chosen (the first declared wins a tie), and only then does the chosen
one train at the comparison's own seeds, which must be fresh, and score test.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domix.errors import DomixError

METRICS = ("macro_f1", "accuracy", "micro_f1")
MIN_TEST_SEEDS = 3  # test figures come from at least this many fresh seeds
# what a grid may not set: where a job runs and reads, what it is, its seed (the search's own), whether it scores test, and
# the records it trains on (the same for every point: the data is part of the budget)
RESERVED = {"task", "modules", "domains", "model", "out", "method", "seed", "init_module", "score_test", "save_model",
            "adapters", "train_limit", "train_skip"}


@dataclass
class Search:
    seeds: list[int]
    space: dict[str, list] = field(default_factory=dict)  # the grid of every method without its own
    methods: dict[str, Any] = field(default_factory=dict)  # method -> its own grid (a mapping of lists) or list of points
    metric: str = "macro_f1"  # the dev score that chooses

    @classmethod
    def from_dict(cls, data: Any, path: Path | str) -> "Search":
        if not isinstance(data, dict):
            raise DomixError(f"search in {path} must be a mapping with 'seeds' and 'space' (or 'methods'), not {data!r}")
        unknown = sorted(set(data) - {"seeds", "space", "methods", "metric"})
        if unknown:
            raise DomixError(f"search in {path} has unknown keys {unknown}; known: seeds, space, methods, metric")
        return cls(**data)

    def points(self, method: str) -> list[dict[str, Any]]:
        """The method's configurations, in the declared order: its own grid, else ``space`` (an empty grid is one
        point, the comparison's settings as they are). A row that trains nothing (base) has one: nothing to tune."""
        if not trains(method):
            return [{}]
        return expand(self.methods.get(method, self.space), f"search.methods.{method}" if method in self.methods else "search.space")

    def check(self, cfg) -> None:
        """Refuse a search that is not equal for every method, or whose seeds are not kept apart from the test seeds."""
        seeds = self.seeds
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise DomixError(f"search.seeds must be a non-empty list of whole numbers (the selection seeds), not {seeds!r}")
        if self.metric not in METRICS:
            raise DomixError(f"search.metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if not isinstance(self.space, dict):
            raise DomixError(f"search.space must be a mapping of setting: [values], not {self.space!r}")
        if not isinstance(self.methods, dict):
            raise DomixError(f"search.methods must be a mapping of method: grid, not {self.methods!r}")
        for method in self.methods:
            if method not in cfg.methods:
                raise DomixError(f"search.methods names {method!r}, which is not among the comparison's methods {cfg.methods}")
        # a point applies to every task: the settings every task's command has (finetune's, instruct's, or both)
        allowed = set.intersection(*(set(t.fields) for t in cfg.tasks)) - RESERVED
        self.space = _coerced(self.space, "search.space")
        self.methods = {m: _coerced(grid, f"search.methods.{m}") for m, grid in self.methods.items()}
        budgets = {}
        for method in filter(trains, cfg.methods):  # a row that trains nothing has nothing to tune: no budget to match
            points = self.points(method)
            for point in points:
                bad = sorted(set(point) - allowed)
                if bad:
                    where = f"search.methods.{method}" if method in self.methods else "search.space"
                    raise DomixError(f"{where} sets {bad}, which a search may not vary; it may vary the runs' settings such as "
                                     "lr, epochs, weight_decay or the bridge's p_lr")
            budgets[method] = len(points)
        if len(set(budgets.values())) > 1:
            counts = ", ".join(f"{m} {n}" for m, n in budgets.items())
            raise DomixError(f"the search gives the methods unequal budgets ({counts} configurations per task); every method gets "
                             "the same number (equal tuning): give each own grid in search.methods as many points as search.space has")
        test_seeds = sorted({s for m in cfg.methods for s in cfg.method_seeds.get(m, cfg.seeds)})
        shared = sorted(set(test_seeds) & set(seeds))
        if shared:
            raise DomixError(f"seed(s) {shared} are both selection seeds (search.seeds) and test seeds (seeds); test figures come "
                             "from fresh seeds: give seeds that search.seeds does not have")
        few = [m for m in cfg.methods if trains(m) and len(cfg.method_seeds.get(m, cfg.seeds)) < MIN_TEST_SEEDS]
        if few:
            raise DomixError(f"with a search, every method's chosen configuration trains at {MIN_TEST_SEEDS} or more fresh seeds; "
                             f"{few} have fewer: give seeds (and method_seeds) at least {MIN_TEST_SEEDS} seeds each")

    def budget(self, methods: list[str]) -> int:
        tuned = [m for m in methods if trains(m)]
        return len(self.points(tuned[0])) if tuned else 0


def trains(method: str) -> bool:
    """Whether a comparison row trains anything (base does not: its one run is the model as it is, at any seed)."""
    from domix.methods.registry import COMPARE, STAGE2

    return STAGE2[COMPARE[method].finetune].trains


def expand(grid: Any, where: str) -> list[dict[str, Any]]:
    """A grid's points: a mapping of setting -> list of values gives their product (in order, the last setting
    varying fastest); a list of mappings gives those points as they are."""
    if isinstance(grid, list):
        if not grid or not all(isinstance(p, dict) for p in grid):
            raise DomixError(f"{where} must be a non-empty list of settings mappings, or a mapping of setting: [values]; got {grid!r}")
        points = [dict(p) for p in grid]
    elif isinstance(grid, dict):
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise DomixError(f"{where}.{key} must be a non-empty list of values to try, not {values!r}")
        points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    else:
        raise DomixError(f"{where} must be a mapping of setting: [values] or a list of settings mappings, not {grid!r}")
    labels = [point_label(p) for p in points]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise DomixError(f"{where} gives the configuration {twice[0]} more than once; each point of a budget must differ")
    return points


def _coerced(grid: Any, where: str) -> Any:
    """The grid with each value as its setting's type asks (YAML reads 1e-3 as text); unknown keys are left for check."""
    import typing

    from domix.finetuning.config import FinetuneConfig
    from domix.settings import coerce

    hints = typing.get_type_hints(FinetuneConfig)

    def one(key, value):
        return coerce(key, value, hints[key], f" in {where}") if key in hints else value

    if isinstance(grid, dict):
        return {k: [one(k, v) for v in values] if isinstance(values, list) else values for k, values in grid.items()}
    if isinstance(grid, list):
        return [{k: one(k, v) for k, v in p.items()} if isinstance(p, dict) else p for p in grid]
    return grid


def point_label(point: dict[str, Any]) -> str:
    """A configuration's name, also its folder under OUT/search/<method>/<task>/: ``lr=0.001,p_lr=10x`` (``default``
    for the comparison's settings as they are)."""
    return ",".join(f"{k}={_text(v)}" for k, v in point.items()) or "default"


def _text(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def choose(candidates: list[dict], metric: str) -> dict:
    """The chosen configuration among ``candidates`` (each ``{"point", "label", "dev": [score per selection run]}``):
    the highest mean dev score, the first declared on a tie. Returns the candidates with their means and the choice."""
    scored = [{**c, "mean": statistics.fmean(c["dev"])} for c in candidates]
    best = max(range(len(scored)), key=lambda i: (scored[i]["mean"], -i))
    return {"metric": metric, "candidates": scored, "chosen": scored[best]["label"], "point": scored[best]["point"]}
