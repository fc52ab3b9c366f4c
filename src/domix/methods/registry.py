"""The one place that maps a method's name to its implementation.

- Stage 1 (``domix pretrain --method NAME``): a trainer, ``(cfg, overwrite, on_step) -> manifests``,
  that writes a store: one piece per domain (LoRA modules, MixDA adapters, MoDE experts) or one
  model for all the domains (the baselines).
- Stage 2 (``domix finetune`` and ``domix instruct --method NAME``): a :class:`~domix.methods.base.TaskMethod`
  that builds the task model, records, saves, reloads and exports it.
- Comparison rows (``domix compare``): a stage-2 method on what a stage-1 method wrote.

An entry holds what the command line, the settings checks and the comparison planner need, and
points at the method's own objects: its settings class, and its trainer or task method as its
package offers them (a function that imports the torch side on first call, so that ``domix --help``
and the settings load no torch). Adding a method means one folder under ``domix/methods/`` and one
line here; nothing outside this file compares method names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from domix.errors import DomixError
from domix.methods import baselines, bridge, full, head, mixda, mode, peft, untrained
from domix.methods.baselines.config import OUTPUTS, WHOLE_MODELS
from domix.methods.bridge.config import BridgeSettings
from domix.methods.mixda.config import KIND as MIXDA_KIND
from domix.methods.mixda.config import MixdaSettings, describe_adapters
from domix.methods.mode.config import KIND as MODE_KIND
from domix.methods.mode.config import ModeFinetuneSettings, ModePretrainSettings, describe_experts

# Named presets of settings (``--recipe NAME``): recipe -> command -> settings. A preset replaces domix's
# defaults; a YAML file and flags still override it. "paper": the published code's values.
Recipes = dict[str, dict[str, dict]]


@dataclass(frozen=True)
class Stage1:
    """A pre-training method (``domix pretrain --method``)."""

    trainer: Callable  # (cfg, overwrite, on_step) -> each domain's manifest
    help: str
    output: str | None = None  # the folder inside the store that fine-tuning starts from (None: one piece per domain)
    gives_model: bool = False  # that output is a whole model (finetune --model), not a LoRA module (--modules)
    ordered: bool = False  # what it writes depends on the order of the domains
    needs_general: bool = False  # it also trains on general-domain text (--general)
    recipes: Recipes = field(default_factory=dict)
    settings: dict[str, type] = field(default_factory=dict)  # command -> the method's own settings class
    # (base LM, one domain's folder of the store) -> a context manager: the LM with that domain's piece as trained,
    # for scoring text (benchmarks/module_knowledge.py); None: a store of one model for all the domains
    domain_model: Callable | None = None


@dataclass(frozen=True)
class Stage2:
    """A task method (``domix finetune`` / ``domix instruct --method``)."""

    composer: Callable  # () -> a fresh methods.base.TaskMethod
    help: str
    store: str | None = None  # the stage-1 method whose store --modules must hold ...
    pieces: str = "domain modules"  # ... and what it calls its pieces, for messages
    modules_required: bool = False  # False: --modules is optional (a rank and layers, or --init-module)
    lora_rank: bool = False  # a fresh adapter of --lora-rank (default: the modules' total rank)
    init_module: bool = False  # may start from one module of --modules (--init-module)
    instruct: bool = False  # offered by domix instruct (causal LMs) too
    classifier: bool = True  # offered by domix finetune (a sequence classifier)
    trains: bool = True  # False: nothing trains (base), so a search has nothing to tune for it
    recipes: Recipes = field(default_factory=dict)
    settings: dict[str, type] = field(default_factory=dict)  # command -> the method's own settings class


@dataclass(frozen=True)
class Row:
    """A row of ``domix compare``: a task method, the pre-training it needs, where it starts."""

    finetune: str  # a STAGE2 name
    pretrain: str | None = None  # a STAGE1 name whose output it uses (None: from the base)
    init: str | None = None  # lora/dora start from "task_domain" (the task's own module) or the stage-1 output
    ordered: bool = False  # its result may depend on the domain order, so it runs once per order
    one_module_rank: bool = False  # a fresh adapter of one module's rank, not the modules' total rank
    recipe: str | None = None  # the method's recipe under the comparison's settings (which still win over it)
    settings: dict = field(default_factory=dict)  # the row's own settings of the method, over the comparison's
    # instruction tasks of a comparison with task_adapters: the row composes the task's own adapter with the store's
    # modules (task_adapter), or trains on that adapter's records as well as its own (adapter_records: equal data)
    task_adapter: bool = False
    adapter_records: bool = False

    @property
    def needs_adapters(self) -> bool:
        """Whether the row runs only where the comparison trains task adapters (its data or its only pieces)."""
        return self.adapter_records or (self.task_adapter and self.pretrain is None)


# the published DoMIX code. Classification: AdamW 3e-5, batch 16, weight decay 0.01, P = I/Σr in its own group
# (lr and weight decay falling back to the others'), B at the run's lr. LLM (its README and finetune_sepLR.py):
# lr 2e-4, 3 epochs, 100 warm-up steps, P at 10x the run's lr with weight decay 0
_PAPER_BRIDGE = {"p_init": "scaled_identity", "b_lr": None}
DOMIX_PAPER: Recipes = {"paper": {"finetune": {"lr": 3e-5, "batch_size": 16, "weight_decay": 0.01, **_PAPER_BRIDGE, "p_lr": None,
                                               "p_weight_decay": 0.01},
                                  "instruct": {"lr": 2e-4, "epochs": 3, "warmup_steps": 100, **_PAPER_BRIDGE, "p_lr": "10x",
                                               "p_weight_decay": 0.0}}}

# the methods' own settings (torch-free modules): a dataclass each, mixed into the command's settings
BRIDGE = {"finetune": BridgeSettings, "instruct": BridgeSettings}

STAGE1: dict[str, Stage1] = {
    "domix": Stage1(bridge.pretrain_modules, "one LoRA module per domain", domain_model=bridge.stage1_model),
    "ncl_lora": Stage1(baselines.pretrain_baseline,
                       "one LoRA trained on the domains in --domain order (OUT/ncl/)", output=OUTPUTS["ncl_lora"], ordered=True),
    "joint_lora": Stage1(baselines.pretrain_baseline,
                         "one LoRA on the domains mixed (OUT/joint/)", output=OUTPUTS["joint_lora"]),
    "ncl_full": Stage1(baselines.pretrain_baseline,
                       "the whole model in --domain order (OUT/ncl-full/)", output=OUTPUTS["ncl_full"],
                       gives_model="ncl_full" in WHOLE_MODELS, ordered=True),
    "mixda": Stage1(mixda.pretrain_mixda,
                    "one FFN adapter per domain (stage 1 of MixDA, needs --general)", needs_general=True,
                    domain_model=mixda.stage1_model,
                    recipes={"paper": {"pretrain": {"lr": 5e-4, "weight_decay": 0.05}}},  # its stage-1 defaults
                    settings={"pretrain": MixdaSettings}),
    "mode": Stage1(mode.pretrain_mode, "expert layers per domain (stage 1 of MoDE)", domain_model=mode.stage1_model,
                   settings={"pretrain": ModePretrainSettings}),
}

STAGE2: dict[str, Stage2] = {
    "domix": Stage2(bridge.bridge, "modules + trainable bridge", store="domix",
                    modules_required=True, instruct=True, recipes=DOMIX_PAPER, settings=BRIDGE),
    "domix_fixed": Stage2(bridge.fixed_bridge, "the bridge frozen at its init", store="domix",
                          modules_required=True, recipes=DOMIX_PAPER, settings=BRIDGE),
    "cat": Stage2(bridge.cat, "the bridge frozen at I", store="domix", modules_required=True, instruct=True,
                  recipes=DOMIX_PAPER, settings=BRIDGE),
    "lora": Stage2(peft.lora, "a PEFT LoRA", store="domix", lora_rank=True, init_module=True, instruct=True),
    "lora_fa": Stage2(peft.lora_fa, "a fresh LoRA with A frozen (DoMIX's trainable shape without "
                      "domain modules)", store="domix", lora_rank=True, instruct=True),
    "dora": Stage2(peft.dora, "a PEFT DoRA", store="domix", lora_rank=True, init_module=True, instruct=True),
    "full": Stage2(full.full, "every weight trains", instruct=True),
    "head": Stage2(head.head, "only the classification head"),
    "base": Stage2(untrained.untrained, "the causal LM as it is, nothing trained (an instruction task's zero-shot floor)",
                   instruct=True, classifier=False, trains=False),
    "mixda": Stage2(mixda.mixda, "a gate over the domain adapters of domix pretrain --method mixda",
                    store="mixda", pieces="domain adapters", modules_required=True,
                    recipes={"paper": {"finetune": {"lr": 1e-4, "weight_decay": 0.01}}}),  # its stage-2 AdamW
    "mode": Stage2(mode.mode, "a gate over the experts of domix pretrain --method mode",
                   store="mode", pieces="domain experts", modules_required=True, instruct=True,
                   settings={"finetune": ModeFinetuneSettings, "instruct": ModeFinetuneSettings}),
}

COMPARE: dict[str, Row] = {
    "full": Row("full"),
    "lora": Row("lora"),
    "dora": Row("dora"),
    "lora_module": Row("lora", pretrain="domix", init="task_domain"),
    "lora_module_rank": Row("lora", one_module_rank=True),  # lora_module's rank without its start: what DAP buys
    "dora_module": Row("dora", pretrain="domix", init="task_domain"),
    "ncl_full": Row("full", pretrain="ncl_full", ordered=True),
    "ncl_lora": Row("lora", pretrain="ncl_lora", init="output", ordered=True),
    "joint_lora": Row("lora", pretrain="joint_lora", init="output"),
    "lora_fa": Row("lora_fa"),  # DoMIX's trainable shape (A frozen) without domain modules
    "head": Row("head"),  # only the classification head: what the frozen base's features give
    "base": Row("base"),  # an instruction task's model untrained: what the base answers zero-shot
    # the bridge lays the modules out by name (methods/bridge/method.py): any domain order gives the same run, bit for bit
    "cat": Row("cat", pretrain="domix", task_adapter=True),
    "domix_fixed": Row("domix_fixed", pretrain="domix", task_adapter=True),
    "domix": Row("domix", pretrain="domix", task_adapter=True),
    "domix_paper": Row("domix", pretrain="domix", recipe="paper", task_adapter=True),  # the published bridge, the comparison's budget
    # the bridge without its cross-module blocks: each module's B reads only its own A (retention against accuracy)
    "domix_diagonal": Row("domix", pretrain="domix", task_adapter=True, settings={"p_blocks": "diagonal"}),
    "lora_equal_data": Row("lora", adapter_records=True),  # LoRA on the task adapters' records and the rows': domix's data
    # the DoMIX LLM setting as published: the task's adapters (trained earlier on other data) and no domain store
    "domix_adapters": Row("domix", task_adapter=True),
    "cat_adapters": Row("cat", task_adapter=True),
    # the domain order only decides which of the gate's seeded output rows faces which domain
    "mixda": Row("mixda", pretrain="mixda"),
    "mode": Row("mode", pretrain="mode"),
}

# what a store's folder holds, by its manifest's kind, where it is not a LoRA module (domix modules)
PIECE_DESCRIPTIONS = {MIXDA_KIND: describe_adapters, MODE_KIND: describe_experts}

INSTRUCT = tuple(name for name, entry in STAGE2.items() if entry.instruct)
CLASSIFIER = tuple(name for name, entry in STAGE2.items() if entry.classifier)


def own_settings(command: str) -> dict[str, type]:
    """Method -> the settings dataclass only that method reads in ``command`` (pretrain, finetune, instruct)."""
    entries = STAGE1 if command == "pretrain" else STAGE2
    return {name: e.settings[command] for name, e in entries.items() if command in e.settings}


def stage1(name: str) -> Stage1:
    if name not in STAGE1:
        raise DomixError(f"unknown --method {name!r}; choose one of {', '.join(STAGE1)}")
    return STAGE1[name]


def stage2(name: str, choices: tuple[str, ...] | None = None) -> Stage2:
    choices = choices or tuple(STAGE2)
    if name not in choices:
        raise DomixError(f"unknown method {name!r}; use one of {', '.join(choices)}")
    return STAGE2[name]


def check_init_module(method: str, init_module: str | None, modules: str | None) -> None:
    """--init-module (finetune and instruct): a LoRA or DoRA started from one module of --modules."""
    if init_module is None:
        return
    spec = STAGE2[method]
    if not spec.init_module:
        raise DomixError(f"--init-module starts a LoRA or DoRA from a module; it does not apply to method {method}"
                         + (" (its A stays at a random init by definition)" if spec.lora_rank else ""))
    if not modules:
        raise DomixError("--init-module names a module of a store; pass --modules STORE too")


def task_method(name: str):
    """A fresh :class:`~domix.methods.base.TaskMethod` of stage-2 method ``name`` (it keeps per-run state)."""
    method = stage2(name).composer()
    method.name = name
    return method


def recipe_of(command: str, method: str, name: str) -> dict:
    """The settings recipe ``name`` gives ``method`` in ``command`` (pretrain, finetune, instruct)."""
    entry = (STAGE1 if command == "pretrain" else STAGE2).get(method)
    if entry is None:
        return {}
    known = sorted(n for n, by_command in entry.recipes.items() if command in by_command)
    if name not in known:
        raise DomixError(f"method {method} has no recipe {name!r} for {command}" + (f"; it has {', '.join(known)}" if known else
                         "; it has none: set its settings with flags or --config"))
    return dict(entry.recipes[name][command])


def recipe_help(command: str) -> str:
    """What each recipe sets, per method (methods with the same preset together): the --recipe flag's help."""
    entries = STAGE1 if command == "pretrain" else {n: e for n, e in STAGE2.items() if command != "instruct" or e.instruct}
    grouped: dict[tuple, list[str]] = {}
    for method, entry in entries.items():
        for name, by_command in entry.recipes.items():
            if command in by_command:
                values = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in by_command[command].items())
                grouped.setdefault((name, values), []).append(method)
    parts = [f"{name} for {', '.join(methods)}: {values}" for (name, values), methods in grouped.items()]
    return ("a named preset of settings, under the YAML file and the flags; " + "; ".join(parts)) if parts else "no recipes"


def method_help(entries: dict, lead: str) -> str:
    return lead + "; ".join(f"{name}: {entry.help}" for name, entry in entries.items())
