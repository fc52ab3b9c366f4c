"""Settings of a domain pre-training run: defaults (docs/methods.md), a YAML file, then flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from domix.errors import DomixError
from domix.methods.registry import method_settings, stage1
from domix.settings import check, check_fields, recorded_settings


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

    def __post_init__(self) -> None:
        check_fields(self)

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
        check([
            (self.rank >= 1, "--rank must be at least 1"),
            (self.alpha > 0, "--alpha must be positive"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (self.lr > 0, "--lr must be positive"),
            (self.weight_decay >= 0, "--weight-decay must be zero or positive"),
            (self.max_grad_norm > 0, "--max-grad-norm must be positive"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.heldout_max_blocks >= 1, "--heldout-max-blocks must be at least 1"),
            (self.epochs > 0, "--epochs must be positive (a fraction such as 0.25 trains on that share of an epoch)"),
            (self.steps is None or self.steps >= 1, "--steps must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.seq_len >= 2, "--seq-len must be at least 2"),
            (0 < self.mlm_probability < 1, "--mlm-probability must be in (0, 1)"),
            (0 <= self.heldout_fraction < 1, "--heldout-fraction must be in [0, 1)"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
            (self.dtype in ("float32", "bfloat16", "float16", "float64"), "--dtype must be float32, bfloat16, float16 or float64"),
            (self.objective in ("auto", "mlm", "clm"), "--objective must be auto, mlm or clm"),
            (not stage1(self.method).needs_general or bool(self.general),
             f"--method {self.method} needs general-domain text for its retention loss; pass --general PATH (a file or folder of text)"),
        ])
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
