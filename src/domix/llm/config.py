"""Settings of an instruction fine-tuning run of a causal LM (``domix instruct``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from domix.errors import DomixError
from domix.methods.registry import INSTRUCT, method_settings, stage2
from domix.settings import (FRACTION, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, at_least, check_fields, check_ranges, one_of,
                            recorded_settings)

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the paper's LLM setting
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "float64")
# the names the command line offers, kept here (no torch import) so that `domix --help` stays fast
TEMPLATES = ("alpaca", "chat", "plain")  # prompt templates: see llm/data.py
PROTOCOLS = ("loglikelihood", "generate")  # multiple-choice scoring: see llm/choice.py
FORMATS = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc", "openbookqa", "generic",
           "llm_adapters")  # task files: llm/choice.py


@dataclass(kw_only=True)
class InstructConfig(*method_settings("instruct")):
    """The settings of domix instruct. A method's own settings (the bridge's p_init, new_rank) come from its
    settings class in the registry, which this class inherits: the same YAML keys and flags."""

    train: str | None = None  # jsonl: prompt/response or instruction/input/output
    dev: str | None = None  # default: a seeded dev_fraction of train
    dev_fraction: float = 0.05
    modules: str | None = None  # a module store (domix pretrain --out) ...
    domains: list[str] | None = None  # ... which of its modules, in this order (default: all)
    adapters: list[str] | None = None  # and/or PEFT LoRA adapter folders (trained anywhere)
    model: str | None = None  # default: the base the modules were trained on
    out: str = ""
    method: str = "domix"  # a stage-2 method of domix.methods.registry that instruct offers (INSTRUCT)
    recipe: str | None = None  # a named preset of the method's settings (registry: recipes), under YAML and flags
    target_modules: list[str] | None = None  # lora/dora: the layers adapted (default DEFAULT_TARGETS)
    lora_rank: int | None = None  # lora/dora: default the modules' total rank if any are given, else 16
    template: str = "alpaca"  # see llm/data.py
    general: str | None = None  # general-domain text: the record gives the LM loss on it before and after (retention)
    general_blocks: int = 64  # sequences of max_length tokens of it that retention scores
    # optimisation
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None  # if set, overrides warmup_ratio (the published LLM recipe: 100)
    epochs: int = 2
    batch_size: int = 8
    max_length: int = 256
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    train_limit: int | None = None  # a seeded sample of the training examples
    seed: int = 42  # batch order, dropout, LoRA init
    sample_seed: int = 0  # which examples train_limit and the dev hold-out take
    checkpoint_every: int = 200
    dtype: str = "auto"  # auto: bfloat16 on a GPU that has it, else float32
    device: str = "auto"
    save_model: bool = True

    COMMAND = "instruct"  # whose recipes apply
    # a recipe's name is not compared, its values are: the same values under another name make the same run
    RESUME_FREE = ("checkpoint_every", "device", "gradient_checkpointing", "out", "save_model", "recipe")
    LORA_RANK = 16  # a fresh LoRA's rank without --lora-rank or modules to take it from
    LORA_TARGETS = DEFAULT_TARGETS  # a fresh LoRA's layers without --target-modules

    # each field's own range, checked when the settings are built (settings.check_ranges)
    RANGES = {"template": one_of(*TEMPLATES), "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_ratio": FRACTION,
              "max_grad_norm": POSITIVE, "epochs": at_least(1), "batch_size": at_least(1), "max_length": at_least(2),
              "dev_fraction": OPEN_FRACTION, "lora_rank": at_least(1), "warmup_steps": at_least(0), "train_limit": at_least(2),
              "checkpoint_every": at_least(1), "dtype": one_of(*DTYPE_CHOICES), "general_blocks": at_least(1)}

    def __post_init__(self) -> None:
        check_fields(self)
        check_ranges(self)

    def validate(self) -> "InstructConfig":
        if not self.out:
            raise DomixError("no output folder given; pass --out DIR")
        if not self.train:
            raise DomixError("no training data given; pass --train FILE (jsonl of prompt/response or instruction/output rows)")
        spec = stage2(self.method, INSTRUCT)
        if spec.modules_required and not (self.modules or self.adapters):
            raise DomixError(f"method {self.method} composes the {spec.pieces} of domix pretrain --method {spec.store}; pass --modules "
                             "STORE (LoRA modules may also come as PEFT adapters: --adapter PATH, repeated)")
        if not spec.modules_required and not (self.model or self.modules or self.adapters):
            raise DomixError(f"method {self.method} needs a base model; pass --model")
        if self.domains and not self.modules:
            raise DomixError("--domains picks modules of a store; pass --modules STORE too")
        for settings in method_settings(self.COMMAND):
            settings.check_settings(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as the run's records keep them: paths portable (settings.recorded_settings)."""
        return recorded_settings(self)

    def inputs(self) -> list[str]:
        """The paths this run reads: its output may never be, hold or lie inside one of them."""
        return [p for p in (self.train, self.dev, self.modules, *(self.adapters or []), self.model, self.general) if p]


FIELDS = {f.name for f in dataclasses.fields(InstructConfig)}
