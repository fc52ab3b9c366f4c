"""Settings of a domain pre-training run: defaults (docs/methods.md), a YAML file, then flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from domix.errors import DomixError
from domix.methods.registry import method_settings, stage1
from domix.settings import (FRACTION, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, at_least, check_fields, check_ranges, one_of,
                            recorded_settings)


@dataclass(kw_only=True)
class PretrainConfig(*method_settings("pretrain")):
    """The settings of domix pretrain. A method's own settings (MixDA's mixda_*, MoDE's mode_*) come from
    its settings class in the registry, which this class inherits: the same YAML keys and flags."""

    model: str = ""
    domains: dict[str, str] = field(default_factory=dict)  # name -> corpus path
    out: str = ""
    objective: str = "auto"  # mlm, clm or auto (from the model)
    method: str = "domix"  # a stage-1 method of domix.methods.registry
    recipe: str | None = None  # a named preset of the method's settings (registry: recipes), under YAML and flags
    general: str | None = None  # a general-domain corpus: MixDA's retention loss trains on it
    text_column: str = "text"  # the corpora's text column (jsonl, CSV, Parquet, datasets)
    # LoRA: r 8, alpha 16, no dropout, every linear layer of every block (DoMIX reference)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    train_head: bool = False
    # optimisation: AdamW 5e-4, linear schedule, 10% warm-up, one epoch
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    epochs: float = 1  # passes over each corpus; a fraction (0.25) trains on that share of one, with its own schedule
    steps: int | None = None  # if set, overrides epochs
    batch_size: int = 16
    seq_len: int = 128
    max_grad_norm: float = 1.0
    mlm_probability: float = 0.15
    seed: int = 42
    heldout_fraction: float = 0.05
    heldout_max_blocks: int = 256
    checkpoint_every: int = 100
    fused: bool = True  # several domains train at once over one base (not with train_head)
    gradient_checkpointing: bool = False  # recompute activations in backward: far less memory, ~1/3 more compute
    dtype: str = "float32"  # float32, bfloat16 or float16
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...

    # each field's own range, checked when the settings are built (settings.check_ranges)
    RANGES = {"rank": at_least(1), "alpha": POSITIVE, "dropout": FRACTION, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
              "max_grad_norm": POSITIVE, "warmup_ratio": FRACTION, "heldout_max_blocks": at_least(1),
              "epochs": (POSITIVE[0], "must be positive (a fraction such as 0.25 trains on that share of an epoch)"),
              "steps": at_least(1), "batch_size": at_least(1), "seq_len": at_least(2), "mlm_probability": OPEN_FRACTION,
              "heldout_fraction": FRACTION, "checkpoint_every": at_least(1), "dtype": one_of("float32", "bfloat16", "float16", "float64"),
              "objective": one_of("auto", "mlm", "clm")}

    def __post_init__(self) -> None:
        check_fields(self)
        check_ranges(self)

    def validate(self) -> "PretrainConfig":
        stage1(self.method)  # an unknown method is named first
        if not self.model:
            raise DomixError("no base model given; pass --model NAME_OR_PATH (a folder, a .gguf file or a hub name)")
        if not self.domains:
            raise DomixError("no domain corpus given; pass --domain NAME=PATH once per domain")
        if not self.out:
            raise DomixError("no output folder given; pass --out DIR")
        for name in self.domains:
            if not name or "/" in name or name.startswith("."):
                raise DomixError(f"domain name {name!r} cannot be a folder name; use letters, digits, '-' or '_'")
        for settings in method_settings(self.COMMAND):
            settings.check_settings(self)
        if stage1(self.method).needs_general and not self.general:
            raise DomixError(f"--method {self.method} needs general-domain text for its retention loss; pass --general PATH "
                             "(a file or folder of text)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as the run's records keep them: paths portable (settings.recorded_settings)."""
        return recorded_settings(self)

    def inputs(self) -> list[str]:
        """The paths this run reads: its output may never be, hold or lie inside one of them."""
        return [p for p in (self.model, *self.domains.values(), self.general) if p]

    COMMAND = "pretrain"  # whose recipes apply
    # Settings that do not change the trained modules, so a resumed run may differ in them.
    # a recipe's name is not compared, its values are: the same values under another name make the same run
    RESUME_FREE = ("checkpoint_every", "device", "out", "gradient_checkpointing", "recipe")


FIELDS = {f.name for f in dataclasses.fields(PretrainConfig)}
