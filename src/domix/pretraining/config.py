"""Settings of a domain pre-training run: defaults (docs/methods.md), a YAML file, then flags."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from domix.errors import DomixError
from domix.methods.registry import own_settings, recipe_of, stage1
from domix.settings import (FRACTION, OPEN_FRACTION, POSITIVE, MethodChoice, RunSettings, TrainingSettings, at_least, one_of,
                            named_path, run_settings, setting, setting_names, unique_names)


def _targets(text: str) -> list[str] | str:
    """--target-modules: comma-separated layer names, or a regex (kept whole)."""
    if any(c in text for c in "\\*()[]|"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


@run_settings
@dataclass(kw_only=True)
class PretrainConfig(RunSettings, MethodChoice, TrainingSettings):
    """The settings of domix pretrain. A method's own settings (MixDA's mixda_*, MoDE's mode_*) are an object of
    its class in the registry, ``method_options``, given flat: the same YAML keys and flags."""

    model: str = setting("", "base model: a local folder, a .gguf file, or a Hugging Face name")
    domains: dict[str, str] = setting(
        factory=dict, flag="--domain", repeat=True, flag_type=named_path, metavar="NAME=PATH",
        collect=lambda pairs: unique_names(pairs, "--domain"),
        help="a domain and its corpus: .txt (a passage a line), .jsonl, .csv, .tsv or .parquet with a text column, a folder of "
             "them, a save_to_disk folder, or a dataset name (NAME or NAME:CONFIG); repeat per domain")
    out: str = setting("", "output folder: the module store")
    objective: str = setting("auto", "mlm, clm or auto (masked LM for encoders, causal for decoders)")
    general: str | None = setting(None, "a general-domain corpus (as --domain's PATH): MixDA's retention loss trains on it")
    text_column: str = setting("text", "the corpora's text column or jsonl field")
    # LoRA: r 8, alpha 16, no dropout, every linear layer of every block (DoMIX reference)
    lora_rank: int = setting(8, "rank of each domain's LoRA module", aliases=("--rank",))
    alpha: float = setting(16.0, "LoRA alpha")
    dropout: float = setting(0.0, "LoRA dropout")
    target_modules: list[str] | str | None = setting(None, "comma-separated layer names or a regex (default: every linear layer of "
                                                           "every block)", _targets)
    train_head: bool = setting(False, "also train the LM head")
    # optimisation: AdamW 5e-4, linear schedule, 10% warm-up, one epoch
    lr: float = setting(5e-4, "AdamW learning rate")
    warmup_ratio: float = setting(0.1, "linear warm-up share of the steps")
    epochs: float = setting(1, "passes over each corpus (0.25: a quarter of one, with its own schedule)", float)
    steps: int | None = setting(None, "steps per domain; overrides --epochs")
    batch_size: int = setting(16, "sequences per step")
    seq_len: int = setting(128, "tokens per sequence")
    mlm_probability: float = setting(0.15, "masked LM: the share of tokens masked")
    seed: int = setting(42, "random seed")
    heldout_fraction: float = setting(0.05, "share of each corpus held out for evaluation")
    heldout_max_blocks: int = setting(256, "cap on held-out sequences")
    checkpoint_every: int = setting(100, "steps between checkpoints")
    fused: bool = setting(True, "train several domains at once over one base; --no-fused trains them one after another; ignored "
                                "by the baseline methods and with --train-head")
    dtype: str = setting("float32", "base model dtype: float32, bfloat16, float16 or float64")

    # each field's own range, checked when the settings are built (settings.check_ranges)
    RANGES = {"lora_rank": at_least(1), "alpha": POSITIVE, "dropout": FRACTION, "lr": POSITIVE,
              "warmup_ratio": FRACTION, "heldout_max_blocks": at_least(1),
              "epochs": (POSITIVE[0], "must be positive (a fraction such as 0.25 trains on that share of an epoch)"),
              "steps": at_least(1), "batch_size": at_least(1), "seq_len": at_least(2), "mlm_probability": OPEN_FRACTION,
              "heldout_fraction": FRACTION, "checkpoint_every": at_least(1), "dtype": one_of("float32", "bfloat16", "float16", "float64"),
              "objective": one_of("auto", "mlm", "clm")}

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
        self.check_method_options()
        if stage1(self.method).needs_general and not self.general:
            raise DomixError(f"--method {self.method} needs general-domain text for its retention loss; pass --general PATH "
                             "(a file or folder of text)")
        return self

    COMMAND = "pretrain"  # whose recipes apply
    OWN_SETTINGS = own_settings(COMMAND)
    recipe_values = staticmethod(partial(recipe_of, COMMAND))
    PATHS = ("model", "domains", "out", "general")
    RENAMED = {"rank": "lora_rank"}  # domix 0.x records and YAML files: pretrain's rank, named as finetune's and instruct's
    # Settings that do not change the trained modules, so a resumed run may differ in them.
    # a recipe's name is not compared, its values are: the same values under another name make the same run
    RESUME_FREE = ("checkpoint_every", "device", "out", "gradient_checkpointing", "recipe")


FIELDS = setting_names(PretrainConfig)
