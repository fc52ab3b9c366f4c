"""Settings of an end-task fine-tuning run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from domix.errors import DomixError
from domix.methods.registry import method_settings, stage2
from domix.settings import (FRACTION, NON_NEGATIVE, POSITIVE, at_least, check_fields, check_ranges, one_of,
                            recorded_settings, setting)

AUTOCAST = ("bfloat16", "float16")  # --autocast's choices


def parse_splits(text: str) -> dict[str, str]:
    """``dev=validation,test=test`` as a mapping, refusing other shapes."""
    pairs = [part.partition("=") for part in str(text).split(",") if part.strip()]
    if not pairs or any(not sep or not a.strip() or not b.strip() for a, sep, b in pairs):
        raise DomixError(f"--splits {text!r} is not SPLIT=NAME[,SPLIT=NAME]; e.g. --splits dev=validation")
    return {a.strip(): b.strip() for a, _, b in pairs}


@dataclass(kw_only=True)
class RunOptions:
    """How a fine-tuning run computes and what it scores (flags generated from these fields)."""

    autocast: str | None = setting(None, "mixed precision of the forward passes: bfloat16 or float16 (matrix products in that "
                                         "dtype, weights and optimizer in --dtype; default: none)")
    group_by_length: bool = setting(False, "batches of examples of similar length (shuffled, a fresh draw every epoch): far fewer "
                                           "padding tokens computed (default: no, batches drawn at random)")
    score_test: bool = setting(True, "score the test split at the end (default: yes); --no-score-test is a selection run: the "
                                     "test split is neither read nor scored, so no decision made on the run can see it")


@dataclass(kw_only=True)
class FinetuneConfig(RunOptions, *method_settings("finetune")):
    """The settings of domix finetune. A method's own settings (the bridge's p_init, MoDE's mode_*) come
    from its settings class in the registry, which this class inherits: the same YAML keys and flags."""

    task: str | None = None  # a folder of train/dev/test files, a save_to_disk folder or a dataset name
    train: str | None = None  # or explicit files (they win over the folder's)
    dev: str | None = None
    test: str | None = None
    text_column: str = "text"  # the task's columns, where they are named otherwise
    text_pair_column: str | None = None  # default: "text_pair" where the task has it
    label_column: str = "label"
    splits: dict[str, str] | None = None  # domix split -> the source's split or file stem: {"dev": "validation"}
    mix_tasks: list[str] | None = None  # other tasks trained along (MoDE's stage 2 on mixed target data): finetune/mixture.py
    modules: str | None = None  # the module store (domix pretrain --out)
    domains: list[str] | None = None  # which modules, in this order (default: all)
    model: str | None = None  # default: the base the modules were trained on
    out: str = ""
    method: str = "domix"  # a stage-2 method of domix.methods.registry
    recipe: str | None = None  # a named preset of the method's settings (registry: recipes), under YAML and flags
    lora_rank: int | None = None  # for lora/dora from the base; default: the modules' total rank (else 8)
    init_module: str | None = None  # for lora/dora: start from this module of --modules (its rank and alpha)
    general: str | None = None  # a general-domain corpus: the record gives the LM loss on it before and after (retention)
    general_blocks: int = 64  # sequences of max_length tokens of it that retention scores
    save_model: bool = True  # False: keep only the scores (result.json), e.g. for full fine-tuning in a comparison
    # optimisation (reference: AdamW 3e-5, batch 16, linear decay)
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    epochs: int = 5
    batch_size: int = 16
    max_length: int = 128
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False  # recompute activations in backward: far less memory, about a third more compute
    select_metric: str = "macro_f1"  # dev metric that picks the kept epoch
    train_limit: int | None = None  # subsample the splits (seeded), for quick runs
    eval_limit: int | None = None
    seed: int = 42  # head init, batch order, dropout
    sample_seed: int = 0  # which examples --train-limit/--eval-limit keep: fixed, so every seed and method sees the same
    checkpoint_every: int = 200
    dtype: str = "float32"
    device: str = "auto"

    # a list or mapping given as a flag's text: one task; "dev=validation,test=test"
    TEXT_FORMS = {"mix_tasks": lambda text: [text], "splits": lambda text: parse_splits(text)}
    # each field's own range, checked when the settings are built (settings.check_ranges)
    RANGES = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_ratio": FRACTION, "max_grad_norm": POSITIVE,
              "epochs": at_least(1), "batch_size": at_least(1), "max_length": at_least(2), "lora_rank": at_least(1),
              "checkpoint_every": at_least(1), "select_metric": one_of("accuracy", "macro_f1", "micro_f1"),
              "dtype": one_of("float32", "bfloat16", "float16", "float64"), "autocast": one_of(*AUTOCAST),
              "train_limit": at_least(2), "eval_limit": at_least(1), "general_blocks": at_least(1)}
    COMMAND = "finetune"  # whose recipes apply
    # a recipe's name is not compared, its values are: the same values under another name make the same run
    RESUME_FREE = ("checkpoint_every", "device", "gradient_checkpointing", "out", "save_model", "recipe")
    LORA_RANK = 8  # a fresh LoRA's rank without --lora-rank or modules to take it from
    LORA_TARGETS = None  # a fresh LoRA adapts the modules' layers, else every linear layer of every block

    def __post_init__(self) -> None:
        check_fields(self)
        check_ranges(self)

    def validate(self) -> "FinetuneConfig":
        if not self.out:
            raise DomixError("no output folder given; pass --out DIR")
        if self.task is None and None in (self.train, self.dev, self.test):
            raise DomixError("no task given; pass --task FOLDER (with train/dev/test.jsonl) or --train, --dev and --test files")
        if self.mix_tasks and self.task in self.mix_tasks:
            raise DomixError(f"--mix-task {self.task} is the run's own --task; mix in other tasks")
        if self.mix_tasks and self.task is None:
            raise DomixError("--mix-task needs the run's own task as a folder (--task), not --train/--dev/--test files")
        spec = stage2(self.method)
        if spec.modules_required and not self.modules:
            raise DomixError(f"method {self.method} needs the {spec.pieces} of domix pretrain --method {spec.store}; "
                             "pass --modules STORE (its --out folder)")
        for settings in method_settings(self.COMMAND):
            settings.check_settings(self)
        if not spec.modules_required and not (self.modules or self.model):
            raise DomixError(f"method {self.method} needs a base model; pass --model (or --modules to take theirs)")
        if self.init_module is not None:
            if not spec.init_module:
                raise DomixError(f"--init-module starts a LoRA or DoRA from a module; it does not apply to method {self.method}"
                                 + (" (its A stays at a random init by definition)" if spec.lora_rank else ""))
            if not self.modules:
                raise DomixError("--init-module names a module of a store; pass --modules STORE too")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as the run's records keep them: paths portable (settings.recorded_settings)."""
        return recorded_settings(self)

    def inputs(self) -> list[str]:
        """The paths this run reads: its output may never be, hold or lie inside one of them."""
        return [p for p in (self.task, self.train, self.dev, self.test, *(self.mix_tasks or []), self.modules, self.model,
                            self.general) if p]

    def columns(self):
        from domix.sources import Columns

        return Columns(self.text_column, self.text_pair_column, self.label_column)


FIELDS = {f.name for f in dataclasses.fields(FinetuneConfig)}
