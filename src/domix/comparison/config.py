"""Settings of a comparison: which methods, tasks, seeds and domain orders, on which data.

A comparison is one YAML file::

    model: .cache/smollm2-135m
    out: runs/compare
    domains: {restaurant: corpora/restaurant.txt, biomed: corpora/biomed.txt, cs: corpora/cs.txt}
    tasks:                      # a task folder and the domain it belongs to (for methods starting from one module)
      restaurant: {path: tasks/restaurant, domain: restaurant}
      # any source finetune --task takes, with its columns and split names where they differ from domix's:
      # sst2: {path: data/sst2_saved, domain: reviews, text_column: sentence, splits: {dev: validation}}
      # a task's own finetune settings, over the comparison's and under a method's: {path: ..., domain: ..., finetune: {epochs: 8}}
      # a causal LM answering with the label word (domix instruct --task; llm/labelled.py):
      # chemprot_llm: {path: tasks/chemprot, domain: biomed, kind: instruction, instruct: {eval_limit: 500}}
      # or trained on an instruction file (domix instruct --train) and scored on multiple-choice files, each a row of
      # the results (a name given once in the comparison); such a comparison names its reference (no dev macro-F1):
      # mix: {path: data/mixture.json, domain: food, kind: instruction, instruct: {choice_tests: {piqa: piqa.json}}}
    methods: [full, lora, domix]
    seeds: [1, 2]
    method_seeds: {full: [1]}   # fewer (or other) seeds for some methods
    orders: 2                   # or a list of domain orders
    method_orders: {ncl_full: 1}   # fewer orders (the first n) for some order-dependent methods
    pretrain: {steps: 20}       # domix pretrain settings shared by every pre-training run
    finetune: {epochs: 2}       # domix finetune settings shared by every fine-tuning run
    instruct: {epochs: 3}       # domix instruct settings shared by every instruction task's run
    method_settings: {full: {lr: 2.0e-5}}   # per-method finetune overrides
    pretrain_method_settings: {ncl_full: {lr: 1.0e-4}}   # per pre-training method overrides
    jobs: 2                     # jobs at once (pre-training first, then fine-tuning)
    general: corpora/general.txt   # general-domain text for MixDA's retention loss
    stores: {domix: runs/store}    # a finished pre-training's folder to use instead of running that pre-training
    # equal tuning (comparison/search.py): every method gets the same number of configurations per task, chosen on
    # dev at the selection seeds by runs that never read the test split; the chosen one then trains at ``seeds``
    # (fresh: none of them a selection seed, at least 3) and only those runs score test
    search:
      seeds: [1, 2]
      space: {lr: [3.0e-4, 1.0e-3, 3.0e-3]}        # every method's grid (the product of the lists) ...
      methods: {domix: {lr: [1.0e-3, 3.0e-3], p_lr: [10x, null]}}   # ... or its own, of no more and no fewer points
    reference: lora   # the row every other is compared with, pair by pair (default: the best on dev without pre-training)
    # instruction tasks: a LoRA adapter per task (domix instruct --method lora), trained first on train_limit records of
    # the task that none of the rows train on (the seeded order's next ones: train_skip), which the rows that compose a
    # store's modules (domix, cat) compose too, as the DoMIX LLM setting composes adapters trained on other data; the
    # row lora_equal_data trains on those records and its own (the equal-data baseline); a task trained on an instruction
    # file names the files its adapters train on instead (adapters: {NAME: FILE}, one adapter each, whole files)
    task_adapters: {train_limit: 320, lora_rank: 8}
    # a fine-tuning run given general text also scores retention (LM loss on it before and after):
    # finetune: {general: corpora/general.txt} for every method, or method_settings: {mode: {general: ...}}
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domix.comparison.search import Search
from domix.errors import DomixError
from domix.finetuning.config import FIELDS as FINETUNE_FIELDS
from domix.llm.config import FIELDS as INSTRUCT_FIELDS
from domix.methods.registry import COMPARE as METHODS
from domix.methods.registry import CLASSIFIER, INSTRUCT
from domix.pretraining.config import FIELDS as PRETRAIN_FIELDS
from domix.pretraining.config import PretrainConfig
from domix.settings import check_fields, read_yaml_mapping, renamed
from domix.sources import looks_like_dataset_name


@dataclass
class ComparedTask:
    """A task of the comparison: its folder, and the domain it belongs to (for methods that start from that domain's module)."""

    name: str
    path: str
    domain: str | None  # the domain it belongs to: its module is where lora_module and dora_module start (None: no such row)
    data: dict[str, Any] = field(default_factory=dict)  # how to read it: text_column, text_pair_column, label_column, splits
    finetune: dict[str, Any] = field(default_factory=dict)  # its own fine-tuning settings, over the comparison's (e.g. epochs)
    # classification: its runs are domix finetune (a head on the encoder); instruction: domix instruct --task, the causal
    # LM answering with the label word (llm/labelled.py), its own settings under instruct: instead of finetune:
    kind: str = "classification"
    instruct: dict[str, Any] = field(default_factory=dict)
    # an instruction file's task: the files its adapters train on, one adapter each (name -> file), with task_adapters
    adapters: dict[str, str] = field(default_factory=dict)

    @property
    def data_key(self) -> str:
        """The command's setting its path is: a task folder (--task), or an instruction file (instruct --train)."""
        return "train" if self.kind == "instruction" and Path(self.path).is_file() else "task"

    @property
    def results(self) -> list[str]:
        """The tasks its test runs report: itself (a task folder's test split), then each multiple-choice file it is scored
        on (choice_tests)."""
        return ([self.name] if self.data_key == "task" else []) + list(self.settings.get("choice_tests") or {})

    @property
    def command(self) -> str:
        """The command its runs are: finetune or instruct."""
        return "instruct" if self.kind == "instruction" else "finetune"

    @property
    def settings(self) -> dict[str, Any]:
        """Its own settings of that command."""
        return self.instruct if self.kind == "instruction" else self.finetune

    @property
    def fields(self) -> set[str]:
        """The settings that command has."""
        return INSTRUCT_FIELDS if self.kind == "instruction" else FINETUNE_FIELDS


@dataclass
class CompareConfig:
    model: str
    domains: dict[str, str]
    tasks: list[ComparedTask]
    out: str = "runs/compare"
    # default: every row a classification task runs (not those that need task_adapters)
    methods: list[str] = field(default_factory=lambda: [m for m, row in METHODS.items()
                                                        if row.finetune in CLASSIFIER and not row.needs_adapters])
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    method_seeds: dict[str, list[int]] = field(default_factory=dict)  # a method's own seeds instead of ``seeds``
    orders: list[list[str]] = field(default_factory=list)  # filled from an int by from_yaml
    method_orders: dict[str, int] = field(default_factory=dict)  # a method's own number of orders (the first n of ``orders``)
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    instruct: dict[str, Any] = field(default_factory=dict)  # domix instruct settings of every instruction task's run
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    pretrain_method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: int = 1  # jobs at once (each its own process with cores/jobs threads)
    general: str | None = None  # general-domain corpus for MixDA's pre-training (retention scores: finetune: {general: ...})
    stores: dict[str, str] = field(default_factory=dict)  # pre-training method -> a finished run's folder to use instead
    search: Search | None = None  # equal tuning on dev before the test runs (comparison/search.py)
    reference: str | None = None  # the row the paired differences are taken against (None: chosen on dev)
    task_adapters: dict[str, Any] | None = None  # domix instruct settings of each instruction task's own adapter (train_limit)

    def inputs(self) -> list[str]:
        """The paths the comparison reads: its out folder may never be, hold or lie inside one of them."""
        return [p for p in (self.model, *self.domains.values(), *(t.path for t in self.tasks),
                            *(f for t in self.tasks for f in t.adapters.values()), self.general,
                            self.finetune.get("general"), self.instruct.get("general"), *self.stores.values()) if p]

    @classmethod
    def from_yaml(cls, path: str | Path, out: str | None = None) -> "CompareConfig":
        path = Path(path)
        data = read_yaml_mapping(path, {f.name for f in dataclasses.fields(cls)}, what="comparison config")
        for key in ("model", "domains", "tasks"):
            if not data.get(key):
                raise DomixError(f"comparison config {path} needs {key!r}")
        if out:
            data["out"] = out
        for key in ("domains", "tasks"):
            if not isinstance(data[key], dict):
                raise DomixError(f"{key} in comparison config {path} must be a mapping of name: "
                                 f"{'corpus path' if key == 'domains' else '{path: ..., domain: ...}'}, not {data[key]!r}")
        data["domains"] = {str(k): v for k, v in data["domains"].items()}
        data["tasks"] = [_task(name, spec, path) for name, spec in data["tasks"].items()]
        orders = data.get("orders", 2 if len(data["domains"]) > 1 else 1)
        if not (isinstance(orders, int) and not isinstance(orders, bool)) and not (
                isinstance(orders, list) and all(isinstance(o, list) for o in orders)):
            raise DomixError(f"orders in comparison config {path} must be a number of orders or a list of domain lists, not {orders!r}")
        # by default a domain order and its reverse; one domain has only one order
        data["orders"] = domain_orders(list(data["domains"]), orders)
        if data.get("search") is not None:
            data["search"] = Search.from_dict(data["search"], path)
        for key in ("pretrain", "pretrain_method_settings"):  # a setting's older name, as domix pretrain --config reads it
            if isinstance(data.get(key), dict):
                data[key] = (renamed(PretrainConfig, data[key], f" in {path}") if key == "pretrain" else
                             {m: renamed(PretrainConfig, v, f" in {path}") if isinstance(v, dict) else v for m, v in data[key].items()})
        return cls(**data).validate()

    def narrowed(self, methods: list[str] | None = None, tasks: list[str] | None = None,
                 seeds: list[int] | None = None) -> "CompareConfig":
        """The same comparison restricted to some of its methods, tasks and seeds (a part of it to run first, into
        the same out folder: its jobs are the full comparison's, so the full run reuses them)."""
        def pick(what: str, asked: list | None, have: list) -> list:
            if asked is None:
                return have
            missing = [a for a in asked if a not in have]
            if missing or not asked:
                raise DomixError(f"--{what} {','.join(map(str, asked))} names {missing or 'nothing'}, not among the comparison's "
                                 f"{what} {have}; choose among those")
            return [h for h in have if h in asked]

        chosen = pick("methods", methods, self.methods)
        by_name = {t.name: t for t in self.tasks}
        all_seeds = sorted({s for m in self.methods for s in self.method_seeds.get(m, self.seeds)})
        keep = pick("seeds", seeds, all_seeds)
        # every chosen method's own seeds among those kept (a method may be left with none: it runs nothing)
        own = {m: [s for s in self.method_seeds.get(m, self.seeds) if s in keep] for m in chosen}
        return dataclasses.replace(self, methods=chosen, tasks=[by_name[n] for n in pick("tasks", tasks, list(by_name))],
                                   method_seeds=own, method_orders={m: n for m, n in self.method_orders.items() if m in chosen})

    def result_tasks(self) -> list[str]:
        """The tasks the results report, in order: each task, or the multiple-choice files it is scored on."""
        return [name for t in self.tasks for name in t.results]

    def rows_train_limit(self, task: ComparedTask) -> int | None:
        """The training records each row of ``task`` draws (its train_limit; None: all of them)."""
        return {**getattr(self, task.command), **task.settings}.get("train_limit")

    def adapter_tasks(self) -> list[ComparedTask]:
        """The tasks with an adapter of their own to train first (task_adapters): the instruction tasks."""
        return [t for t in self.tasks if t.kind == "instruction"] if self.task_adapters is not None else []

    def _check_instruction_files(self) -> None:
        """What the tasks report is named once; tasks trained on an instruction file score their choice files, and take no
        search and a named reference (no dev macro-F1 to choose on)."""
        names = self.result_tasks()
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DomixError(f"the comparison reports {twice} twice (a task's name or its choice_tests'); give each its own name")
        files = [t for t in self.tasks if t.data_key == "train"]
        if not files:
            return
        unscored = [t.name for t in files if not t.results]
        if unscored:
            raise DomixError(f"tasks {unscored} train on an instruction file and score nothing on test; give each "
                             "instruct: {choice_tests: {NAME: FILE}} (multiple-choice files, as domix eval-choice --task reads)")
        if self.search is not None:
            raise DomixError(f"tasks {[t.name for t in files]} train on an instruction file, whose dev split gives a loss and no "
                             "macro-F1 to choose on; drop search or those tasks")
        if self.reference is None:
            raise DomixError(f"tasks {[t.name for t in files]} train on an instruction file, whose dev split has no macro-F1 to "
                             "choose the reference row on; name it (reference: dora, say)")

    def _check_task_adapters(self) -> None:
        """task_adapters and the rows that need them: records apart from every row's, for instruction tasks only."""
        needs = [m for m in self.methods if METHODS[m].needs_adapters]
        named = [t.name for t in self.tasks if t.adapters]
        if any(t.data_key != "train" for t in self.tasks if t.adapters):
            raise DomixError(f"tasks {named}: adapters: files are for a task trained on an instruction file; a task folder's "
                             "adapter trains on its own records (task_adapters: {train_limit: N})")
        if named and self.task_adapters is None:
            raise DomixError(f"tasks {named} name their adapters' files; add task_adapters: (their settings, {{}} for the defaults)")
        if self.task_adapters is None:
            if needs:
                raise DomixError(f"{needs} compose each task's own adapters or train on their records, which only a comparison "
                                 "with task_adapters: {train_limit: N} has; add it, or drop those rows")
            return
        if not isinstance(self.task_adapters, dict):
            raise DomixError(f"task_adapters must be a mapping of domix instruct settings (e.g. {{train_limit: 320, lora_rank: 8}}), "
                             f"not {self.task_adapters!r}")
        _known_keys("task_adapters", self.task_adapters,
                    INSTRUCT_FIELDS - (RUN_RESERVED - {"seed"}) - {"init_module", "score_test", "save_model"} - INSTRUCT_TASK_KEYS)
        if not self.adapter_tasks():
            raise DomixError("task_adapters trains an adapter per instruction task, and the comparison has none (kind: instruction); "
                             "drop task_adapters or add such a task")
        if needs and any(t.kind != "instruction" for t in self.tasks):
            raise DomixError(f"{needs} compose an instruction task's adapters or train on their records, which a classification "
                             "task does not have; compare those rows on instruction tasks only")
        from_files = [t.name for t in self.adapter_tasks() if t.adapters]
        if from_files:  # whole files: a row's and an adapter's records are the files' (the equal-data row trains on them all)
            limited = [t.name for t in self.adapter_tasks() if self.rows_train_limit(t) is not None]
            if limited or "train_limit" in self.task_adapters or len(from_files) < len(self.adapter_tasks()):
                raise DomixError(f"tasks {from_files} train adapters on files of their own, whole (the files are the samples), so "
                                 "no train_limit may apply (in instruct:, a task's or task_adapters) and every instruction task "
                                 "names its adapters' files; drop train_limit, or the adapters: files")
            return
        if not isinstance(self.task_adapters.get("train_limit"), int):
            raise DomixError("task_adapters needs train_limit: the number of each task's records its adapter trains on (none of "
                             "them a row's)")
        for task in self.adapter_tasks():
            if self.rows_train_limit(task) is None:
                raise DomixError(f"task {task.name!r}: with task_adapters the rows train on a sample (instruct: {{train_limit: N}}), "
                                 "so that the adapter's records can be apart from theirs; set train_limit")
        varied = sorted(m for m, own in self.method_settings.items() if "train_limit" in own)
        if varied:
            raise DomixError(f"method_settings of {varied} set train_limit; with task_adapters every row draws the same records "
                             "(the equal-data row adds the adapter's): set it under instruct: or the task's")

    def validate(self) -> "CompareConfig":
        check_fields(self)
        for key in ("methods", "seeds", "domains", "tasks"):
            if not getattr(self, key):
                raise DomixError(f"the comparison's {key} is an empty list; give at least one (a comparison of nothing runs nothing)")
        for name, path in [*self.domains.items(), *((t.name, t.path) for t in self.tasks),
                           *((f"{t.name}.adapters.{a}", f) for t in self.tasks for a, f in t.adapters.items())]:
            if not Path(path).exists() and not looks_like_dataset_name(path):
                raise DomixError(f"{name!r} reads {path}, which does not exist; fix the path in the comparison config "
                                 "(relative paths are read from where domix compare runs)")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise DomixError(f"unknown method(s) {unknown} in the comparison; choose from {list(METHODS)}")
        for task in self.tasks:
            if task.domain is not None and task.domain not in self.domains:
                raise DomixError(f"task {task.name!r} belongs to domain {task.domain!r}, which is not among the domains {list(self.domains)}")
            from_domain = [m for m in self.methods if METHODS[m].init == "task_domain"]
            if task.domain is None and from_domain:
                raise DomixError(f"task {task.name!r} names no domain, and {from_domain} start from the task's own domain module; "
                                 "give it domain: (one of the domains)")
        for method, seeds in self.method_seeds.items():
            if method not in self.methods:
                raise DomixError(f"method_seeds names {method!r}, which is not among the comparison's methods {self.methods}")
            if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
                raise DomixError(f"method_seeds.{method} must be a list of whole numbers, not {seeds!r}")
        for method, n in self.method_orders.items():
            if method not in self.methods:
                raise DomixError(f"method_orders names {method!r}, which is not among the comparison's methods {self.methods}")
            if not METHODS[method].ordered:
                raise DomixError(f"method_orders names {method!r}, whose run is the same in every domain order (it runs once); "
                                 "remove it from method_orders")
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(self.orders):
                raise DomixError(f"method_orders.{method} must be a whole number from 1 to {len(self.orders)} (the comparison's orders), "
                                 f"not {n!r}")
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise DomixError(f"jobs must be a whole number of at least 1, not {self.jobs!r}")
        if self.reference is not None and self.reference not in self.methods:
            raise DomixError(f"reference {self.reference!r} is not among the comparison's methods {self.methods}; name one of them")
        pretrain_methods = {m.pretrain for m in METHODS.values() if m.pretrain}
        for method, folder in self.stores.items():
            if method not in pretrain_methods:
                raise DomixError(f"stores names {method!r}, which is not a pre-training method; choose from {sorted(pretrain_methods)}")
            if not isinstance(folder, str) or not Path(folder).is_dir():
                raise DomixError(f"stores.{method} must be the folder of a finished domix pretrain --method {method} run; "
                                 f"{folder!r} is not a folder")
        if self.search is not None:
            self.search.check(self)
        self._check_instruction_files()
        _known_keys("pretrain", self.pretrain, PRETRAIN_FIELDS - {"model", "domains", "out", "method", "general"})
        _known_keys("finetune", self.finetune, FINETUNE_FIELDS - RUN_RESERVED - {"init_module"})
        _known_keys("instruct", self.instruct, INSTRUCT_FIELDS - RUN_RESERVED - {"init_module"} - INSTRUCT_TASK_KEYS)
        self._check_task_adapters()
        for task in self.tasks:
            data = set(TASK_DATA_KEYS) if task.command == "finetune" else INSTRUCT_TASK_KEYS  # the task's, given elsewhere
            _known_keys(f"tasks.{task.name}.{task.command}", task.settings, task.fields - data - RUN_RESERVED - {"init_module"})
            offered = INSTRUCT if task.kind == "instruction" else CLASSIFIER
            unable = [m for m in self.methods if METHODS[m].finetune not in offered]
            if unable:
                what = "an instruction task (domix instruct)" if task.kind == "instruction" else "a classification task (domix finetune)"
                raise DomixError(f"task {task.name!r} is {what}, which methods {unable} do not run; drop them or the task "
                                 f"(domix {task.command} offers {', '.join(offered)})")
        for method, settings in self.method_settings.items():
            if method not in METHODS:
                raise DomixError(f"method_settings names unknown method {method!r}; choose from {list(METHODS)}")
            # a method's settings apply to the runs of the command each names (finetune's, instruct's, or both)
            _known_keys(f"method_settings.{method}", settings, (FINETUNE_FIELDS | INSTRUCT_FIELDS) - RUN_RESERVED)
        for method, settings in self.pretrain_method_settings.items():
            if method not in pretrain_methods:
                raise DomixError(f"pretrain_method_settings names {method!r}, which is not a pre-training method; choose from {sorted(pretrain_methods)}")
            _known_keys(f"pretrain_method_settings.{method}", settings, PRETRAIN_FIELDS - {"model", "domains", "out", "method"})
        return self


TASK_DATA_KEYS = ("text_column", "text_pair_column", "label_column", "splits")
TASK_KINDS = ("classification", "instruction")
RUN_RESERVED = {"task", "modules", "domains", "model", "out", "method", "seed", "adapters", "train_skip"}  # what the comparison sets
INSTRUCT_TASK_KEYS = {"train", "dev"}  # an instruction task's data is its folder (--task), never files of its own


def _task(name: str, spec: Any, config_path: Path) -> ComparedTask:
    if not isinstance(spec, dict) or "path" not in spec:
        raise DomixError(f"task {name!r} in {config_path} needs a mapping with 'path' (the task folder) and, for the rows "
                         "that start from the task's own domain module, 'domain'")
    kind = spec.get("kind", "classification")
    if kind not in TASK_KINDS:
        raise DomixError(f"task {name!r} in {config_path} has kind {kind!r}; use {' or '.join(TASK_KINDS)}")
    settings_key = "instruct" if kind == "instruction" else "finetune"
    # an instruction task reads its folder's own columns; it may name the files its adapters train on
    data_keys = ("adapters",) if kind == "instruction" else TASK_DATA_KEYS
    unknown = sorted(set(spec) - {"path", "domain", "kind", settings_key, *data_keys})
    if unknown:
        raise DomixError(f"task {name!r} in {config_path} has unknown keys {unknown}; a {kind} task knows: path, domain, kind, "
                         f"{', '.join([settings_key, *data_keys])}")
    adapters = spec.get("adapters") or {}
    if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
        raise DomixError(f"task {name!r} in {config_path}: adapters must be a mapping of name: instruction file, not {adapters!r}")
    own = spec.get(settings_key) or {}
    if not isinstance(own, dict):
        raise DomixError(f"task {name!r} in {config_path}: {settings_key!r} must be a mapping of settings (e.g. {{epochs: 8}}), "
                         f"not {own!r}")
    domain = None if spec.get("domain") is None else str(spec["domain"])
    task = ComparedTask(str(name), str(spec["path"]), domain, {k: spec[k] for k in TASK_DATA_KEYS if k in spec},
                        kind=kind, adapters={str(k): v for k, v in adapters.items()})
    setattr(task, settings_key, own)
    return task


def _known_keys(where: str, settings: dict, allowed: set[str]) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise DomixError(f"the comparison's {where} settings have unknown or reserved keys {unknown}; allowed: {sorted(allowed)}")


def domain_orders(domains: list[str], orders: int | list[list[str]]) -> list[list[str]]:
    """The domain orders to run: a given list (each a permutation of the domains), or the first n of
    the given order, its reverse, then the remaining permutations."""
    if isinstance(orders, int):
        candidates = [domains, domains[::-1]] + [list(p) for p in itertools.permutations(domains)]
        unique = list(dict.fromkeys(tuple(c) for c in candidates))
        if not 1 <= orders <= len(unique):
            raise DomixError(f"orders must be between 1 and {len(unique)} for {len(domains)} domains, not {orders}")
        return [list(o) for o in unique[:orders]]
    for order in orders:
        if sorted(order) != sorted(domains):
            raise DomixError(f"domain order {order} is not a permutation of the domains {domains}")
    return [list(o) for o in orders]
