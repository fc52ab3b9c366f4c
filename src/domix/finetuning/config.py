"""Settings of an end-task fine-tuning run."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from domix.errors import DomixError
from domix.methods.registry import CLASSIFIER, check_init_module, own_settings, recipe_of, stage2
from domix.settings import (FRACTION, POSITIVE, MethodChoice, RunSettings, SpeedOptions, TrainingSettings, at_least, comma_list,
                            one_of, run_settings, setting, setting_names)


def parse_splits(text: str) -> dict[str, str]:
    """``dev=validation,test=test`` as a mapping, refusing other shapes."""
    pairs = [part.partition("=") for part in str(text).split(",") if part.strip()]
    if not pairs or any(not sep or not a.strip() or not b.strip() for a, sep, b in pairs):
        raise DomixError(f"--splits {text!r} is not SPLIT=NAME[,SPLIT=NAME]; e.g. --splits dev=validation")
    return {a.strip(): b.strip() for a, _, b in pairs}


@dataclass(kw_only=True)
class RunOptions(SpeedOptions):
    """How a fine-tuning run computes and what it scores (flags generated from these fields)."""

    score_test: bool = setting(True, "score the test split at the end; --no-score-test is a selection run: the "
                                     "test split is neither read nor scored, so no decision made on the run can see it")


TASK_HELP = ("folder with train, dev and test files (.jsonl, .csv, .tsv or .parquet with columns 'text', optional 'text_pair', "
             "'label'), a save_to_disk folder, or a dataset name (NAME or NAME:CONFIG)")


@dataclass(kw_only=True)
class TaskColumns:
    """The columns of a labelled task, where they are named otherwise (domix finetune and domix evaluate)."""

    text_column: str = setting("text", "the task's text column")
    text_pair_column: str | None = setting(None, "the second text of a pair (default: 'text_pair' where there is one)")
    label_column: str = setting("label", "the task's label column (a ClassLabel's names are used)")

    def columns(self):
        from domix.sources import Columns

        return Columns(self.text_column, self.text_pair_column, self.label_column)


@dataclass(kw_only=True)
class EvaluateSettings(TaskColumns):
    """What domix evaluate reads besides the model and the data."""

    split: str | None = setting(None, "the split of a dataset with several (default: test)")
    predictions: str | None = setting(None, "write one prediction a line to this jsonl file")
    base_model: str | None = setting(None, "the base model to rebuild a task model on (default: the one its record names)",
                                     flag="--model")
    max_length: int | None = setting(None, "tokens per example, for exported folders without domix export's record (task models "
                                           "know theirs; default: domix finetune's)")


@run_settings
@dataclass(kw_only=True)
class FinetuneConfig(RunSettings, MethodChoice, TrainingSettings, RunOptions, TaskColumns):
    """The settings of domix finetune. A method's own settings (the bridge's p_init, MoDE's mode_*) are an object of
    its class in the registry, ``method_options``, given flat: the same YAML keys and flags."""

    task: str | None = setting(None, TASK_HELP)
    train: str | None = setting(None, "train file (overrides the task folder's)")
    dev: str | None = setting(None, "dev file")
    test: str | None = setting(None, "test file")
    splits: dict[str, str] | None = setting(None, "the task's split names where they are not train, dev, test, e.g. dev=validation "
                                                  "(validation, valid and val are tried for dev anyway)")
    mix_tasks: list[str] | None = setting(
        None, flag="--mix-task", repeat=True, metavar="TASK",
        help="another task to train along with --task (repeat): the examples are shuffled together, each task has its own labels "
             "of one head, and the dev mean picks the epoch; MoDE's stage 2 trains its gates on such mixed target data. The "
             "saved model is --task's; result.json scores every task (finetuning/mixture.py)")
    modules: str | None = setting(None, "module store: the --out folder of domix pretrain")
    domains: list[str] | None = setting(None, "comma-separated modules to compose, in order (default: all)", comma_list)
    model: str | None = setting(None, "base model (default: the one the modules were trained on)")
    out: str = setting("", "output folder")
    lora_rank: int | None = setting(None, "rank for lora/dora from the base (default: the modules' total rank, else 8)")
    init_module: str | None = setting(None, "lora/dora: start from this module of --modules (its rank, alpha and weights)")
    general: str | None = setting(None, "a general-domain corpus: the record gives the language-model loss on it before and "
                                        "after (retention)")
    general_blocks: int = setting(64, "sequences of --max-length tokens of --general that retention scores")
    save_model: bool = setting(True, "write the task model; --no-save-model keeps only result.json")
    # optimisation (reference: AdamW 3e-5, batch 16, linear decay)
    lr: float = setting(3e-5, "learning rate of B_cat and the head")
    warmup_ratio: float = setting(0.0, "linear warm-up share of the steps (0: linear decay from the start)")
    epochs: int = setting(5, "passes over the training set")
    batch_size: int = setting(16, "examples per step")
    max_length: int = setting(128, "tokens per example")
    select_metric: str = setting("macro_f1", "dev metric that picks the kept epoch: accuracy, macro_f1 or micro_f1")
    train_limit: int | None = setting(None, "use a seeded sample of this many training examples")
    eval_limit: int | None = setting(None, "use a seeded sample of this many dev and test examples")
    seed: int = setting(42, "head init, batch order and dropout")
    sample_seed: int = setting(0, "seed of the --train-limit/--eval-limit samples: fixed, so every --seed and method sees the same")
    checkpoint_every: int = setting(200, "steps between checkpoints (also at every epoch's end)")
    dtype: str = setting("float32", "base model dtype: float32, bfloat16, float16 or float64")

    # a list or mapping given as a flag's text: one task; "dev=validation,test=test"
    TEXT_FORMS = {"mix_tasks": lambda text: [text], "splits": lambda text: parse_splits(text)}
    # each field's own range, checked when the settings are built (settings.check_ranges)
    RANGES = {"lr": POSITIVE, "warmup_ratio": FRACTION,
              "epochs": at_least(1), "batch_size": at_least(1), "max_length": at_least(2), "lora_rank": at_least(1),
              "checkpoint_every": at_least(1), "select_metric": one_of("accuracy", "macro_f1", "micro_f1"),
              "dtype": one_of("float32", "bfloat16", "float16", "float64"),
              "train_limit": at_least(2), "eval_limit": at_least(1), "general_blocks": at_least(1)}
    COMMAND = "finetune"  # whose recipes apply
    OWN_SETTINGS = own_settings(COMMAND)
    recipe_values = staticmethod(partial(recipe_of, COMMAND))
    PATHS = ("task", "train", "dev", "test", "mix_tasks", "modules", "model", "out", "general")
    # a recipe's name is not compared, its values are: the same values under another name make the same run
    RESUME_FREE = ("checkpoint_every", "device", "gradient_checkpointing", "out", "save_model", "recipe")
    LORA_RANK = 8  # a fresh LoRA's rank without --lora-rank or modules to take it from
    LORA_TARGETS = None  # a fresh LoRA adapts the modules' layers, else every linear layer of every block

    def validate(self) -> "FinetuneConfig":
        if not self.out:
            raise DomixError("no output folder given; pass --out DIR")
        if self.task is None and None in (self.train, self.dev, self.test):
            raise DomixError("no task given; pass --task FOLDER (with train/dev/test.jsonl) or --train, --dev and --test files")
        if self.mix_tasks and self.task in self.mix_tasks:
            raise DomixError(f"--mix-task {self.task} is the run's own --task; mix in other tasks")
        if self.mix_tasks and self.task is None:
            raise DomixError("--mix-task needs the run's own task as a folder (--task), not --train/--dev/--test files")
        spec = stage2(self.method, CLASSIFIER)
        if spec.modules_required and not self.modules:
            raise DomixError(f"method {self.method} needs the {spec.pieces} of domix pretrain --method {spec.store}; "
                             "pass --modules STORE (its --out folder)")
        self.check_method_options()
        if not spec.modules_required and not (self.modules or self.model):
            raise DomixError(f"method {self.method} needs a base model; pass --model (or --modules to take theirs)")
        check_init_module(self.method, self.init_module, self.modules)
        return self


FIELDS = setting_names(FinetuneConfig)
