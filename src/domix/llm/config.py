"""Settings of an instruction fine-tuning run of a causal LM (``domix instruct``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from domix.errors import DomixError
from domix.methods.registry import INSTRUCT, check_init_module, own_settings, recipe_of, stage2
from domix.settings import (FRACTION, OPEN_FRACTION, POSITIVE, MethodChoice, RunSettings, SpeedOptions, TrainingSettings, at_least,
                            comma_list, named_path, one_of, run_settings, setting, setting_names, unique_names)

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the paper's LLM setting
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "float64")
# the names the command line offers, kept here (no torch import) so that `domix --help` stays fast
TEMPLATES = ("alpaca", "chat", "plain")  # prompt templates: see llm/data.py
PROTOCOLS = ("loglikelihood", "generate")  # multiple-choice scoring: see llm/choice.py
FORMATS = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc", "openbookqa", "generic",
           "llm_adapters")  # task files: llm/choice.py


@run_settings
@dataclass(kw_only=True)
class InstructConfig(RunSettings, MethodChoice, TrainingSettings, SpeedOptions):
    """The settings of domix instruct. A method's own settings (the bridge's p_init, new_rank) are an object of its
    class in the registry, ``method_options``, given flat: the same YAML keys and flags."""

    train: str | list[str] | None = setting(
        None, "jsonl (or a JSON list) of prompt/response or instruction/input/output rows; repeat to train on several files "
              "together", repeat=True, collect=lambda paths: paths[0] if len(paths) == 1 else paths, metavar="FILE")
    task: str | None = setting(None, "instead of --train: a labelled task folder (train, dev, test files, as domix finetune "
                                     "reads), its examples as instructions that list the labels, the answer the label word; "
                                     "dev and test scored by the label words (llm/labelled.py)")
    task_instruction: str | None = setting(None, "--task: the instruction every example gets, {labels} standing for the label list "
                                                 "(default: 'Classify the input. Answer with exactly one of these labels: {labels}.')")
    dev: str | None = setting(None, "dev jsonl (default: a seeded --dev-fraction of --train)")
    dev_fraction: float = setting(0.05, "share of --train held out when no --dev is given")
    modules: str | None = setting(None, "module store to compose (the --out folder of domix pretrain)")
    domains: list[str] | None = setting(None, "comma-separated modules of --modules, in order (default: all)", comma_list)
    init_module: str | None = setting(None, "lora/dora: start from this module of --modules (its rank, alpha and weights)")
    adapters: list[str] | None = setting(None, "a PEFT LoRA adapter folder to compose (adapter_config.json + "
                                               "adapter_model.safetensors); repeat", flag="--adapter", repeat=True, metavar="PATH")
    model: str | None = setting(None, "base causal LM (default: the one the modules name)")
    out: str = setting("", "output folder")
    target_modules: list[str] | None = setting(None, "lora/dora: comma-separated layer names (default: "
                                                     f"{','.join(DEFAULT_TARGETS)})", comma_list)
    lora_rank: int | None = setting(None, "lora/dora rank (default: the modules' total rank, else 16); alpha is 2x the rank")
    template: str = setting("alpaca", f"prompt template: {', '.join(TEMPLATES)} (chat: the tokenizer's; see llm/data.py)")
    general: str | None = setting(None, "general-domain text (a file or folder, as pretrain's --domain PATH): the record gives "
                                        "the LM loss on it before and after training (retention)")
    general_blocks: int = setting(64, "sequences of --max-length tokens of --general that retention scores")
    # optimisation
    lr: float = setting(2e-4, "AdamW learning rate")
    warmup_ratio: float = setting(0.03, "linear warm-up share of the steps")
    warmup_steps: int | None = setting(None, "linear warm-up steps; overrides --warmup-ratio (the published LLM recipe: 100)")
    epochs: int = setting(2, "passes over the training set")
    batch_size: int = setting(8, "examples per step")
    max_length: int = setting(256, "tokens per example, prompt and response")
    pad_multiple: int = setting(1, "pad each batch to a multiple of this many tokens: a few batch shapes instead of one per "
                                   "length (a GPU's first pass at a new shape is slow; benchmarks/instruct_shapes.py counts them)")
    train_limit: int | None = setting(None, "use a seeded sample of this many training examples")
    train_skip: int = setting(0, "leave out the first N training examples of the seeded order before --train-limit takes "
                                 "its sample: runs of one --sample-seed that skip 0 and N train on disjoint records")
    eval_limit: int | None = setting(None, "--task: a seeded sample of this many dev and test examples each")
    choice_tests: dict[str, str] = setting(
        factory=dict, flag="--choice-test", repeat=True, flag_type=named_path, metavar="NAME=FILE",
        collect=lambda pairs: unique_names(pairs, "--choice-test"),
        help="a multiple-choice test file (as domix eval-choice --task reads) to score the trained model on at the end, in both "
             "protocols (log-likelihood, and generate: 32 new tokens, --choice-beams), --batch-size questions at once; repeat")
    choice_beams: int = setting(1, "--choice-test: beams of the generate protocol (1: greedy; the published LLM-Adapters and "
                                   "DoMIX evaluations use 4)")
    score_test: bool = setting(True, "score the test split (--task) and the --choice-test files; --no-score-test leaves them "
                                     "unread (a selection run: choices made on dev never see test)")
    seed: int = setting(42, "batch order, dropout, LoRA init")
    sample_seed: int = setting(0, "seed of the dev hold-out and the --train-limit sample")
    checkpoint_every: int = setting(200, "steps between checkpoints (also at every epoch's end)")
    dtype: str = setting("auto", f"{', '.join(DTYPE_CHOICES)}; auto: bfloat16 on a GPU that has it, else float32")
    save_model: bool = setting(True, "write the model; --no-save-model keeps only result.json")

    COMMAND = "instruct"  # whose recipes apply
    OWN_SETTINGS = own_settings(COMMAND)
    recipe_values = staticmethod(partial(recipe_of, COMMAND))
    PATHS = ("train", "task", "dev", "modules", "adapters", "model", "out", "general", "choice_tests")
    # a recipe's name is not compared, its values are: the same values under another name make the same run
    RESUME_FREE = ("checkpoint_every", "device", "gradient_checkpointing", "out", "save_model", "recipe")
    LORA_RANK = 16  # a fresh LoRA's rank without --lora-rank or modules to take it from
    LORA_TARGETS = DEFAULT_TARGETS  # a fresh LoRA's layers without --target-modules

    # each field's own range, checked when the settings are built (settings.check_ranges)
    RANGES = {"template": one_of(*TEMPLATES), "lr": POSITIVE, "warmup_ratio": FRACTION,
              "epochs": at_least(1), "batch_size": at_least(1), "max_length": at_least(2),
              "dev_fraction": OPEN_FRACTION, "lora_rank": at_least(1), "warmup_steps": at_least(0), "train_limit": at_least(2),
              "train_skip": at_least(0), "eval_limit": at_least(1), "choice_beams": at_least(1), "pad_multiple": at_least(1),
              "checkpoint_every": at_least(1), "dtype": one_of(*DTYPE_CHOICES), "general_blocks": at_least(1)}

    def validate(self) -> "InstructConfig":
        if not self.out:
            raise DomixError("no output folder given; pass --out DIR")
        if not self.train and not self.task:
            raise DomixError("no training data given; pass --train FILE (jsonl of prompt/response or instruction/output rows) "
                             "or --task FOLDER (a labelled task, read as instructions)")
        if self.task and (self.train or self.dev):
            raise DomixError("--task reads the task folder's train and dev splits; drop --train and --dev (or --task)")
        if not self.task and (self.task_instruction or self.eval_limit is not None):
            raise DomixError("--task-instruction and --eval-limit apply to a labelled task; pass --task FOLDER")
        if not self.task and not self.choice_tests and not self.score_test:
            raise DomixError("--no-score-test leaves a test unread, and this run has none; pass --task FOLDER or --choice-test NAME=FILE")
        spec = stage2(self.method, INSTRUCT)
        if spec.modules_required and not (self.modules or self.adapters):
            raise DomixError(f"method {self.method} composes the {spec.pieces} of domix pretrain --method {spec.store}; pass --modules "
                             "STORE (LoRA modules may also come as PEFT adapters: --adapter PATH, repeated)")
        if not spec.modules_required and not (self.model or self.modules or self.adapters):
            raise DomixError(f"method {self.method} needs a base model; pass --model")
        if self.domains and not self.modules:
            raise DomixError("--domains picks modules of a store; pass --modules STORE too")
        check_init_module(self.method, self.init_module, self.modules)
        self.check_method_options()
        return self


FIELDS = setting_names(InstructConfig)


@dataclass(kw_only=True)
class LoadSettings:
    """How domix eval-choice and domix generate load a model and prompt it."""

    base_model: str | None = setting(None, "the base to rebuild a domix instruct model on (default: the one its record names)")
    template: str | None = setting(None, f"prompt template: {', '.join(TEMPLATES)} (default: the model's, else alpaca)")
    dtype: str = setting("auto", f"{', '.join(DTYPE_CHOICES)}, for models that are not domix instruct folders")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    num_beams: int = setting(1, "beams of beam search (1: greedy; the published DoMIX evaluation uses 4); recorded with the scores")


@dataclass(kw_only=True)
class ChoiceSettings(LoadSettings):
    """How domix eval-choice scores (its flags; llm/choice.py's defaults)."""

    protocol: str = setting("both", "loglikelihood (lm-eval style acc and acc_norm), generate (LLM-Adapters style), or both")
    out: str | None = setting(None, "write the results as JSON here")
    details: str | None = setting(None, "write each question's scores or generated text as JSON here")
    limit: int | None = setting(None, "only the first N questions of each file")
    batch_size: int = setting(8, "questions scored at once")
    max_length: int = setting(2048, "log-likelihood: inputs cut from the left to this many tokens")
    max_new_tokens: int = setting(32, "generate: tokens generated per question")


@dataclass(kw_only=True)
class GenerateSettings(LoadSettings):
    """How domix generate continues its prompts."""

    max_new_tokens: int = setting(128, "tokens generated per prompt")

