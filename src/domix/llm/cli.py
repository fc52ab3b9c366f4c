"""The causal-LM subcommands of ``domix``: instruct, eval-choice, generate (added by domix/cli.py)."""

from __future__ import annotations

import argparse

from domix.errors import DomixError
from domix.llm.config import DTYPE_CHOICES, FORMATS, PROTOCOLS, TEMPLATES
from domix.methods.registry import INSTRUCT, STAGE2, method_help, method_settings, recipe_help
from domix.settings import add_setting_flags


def _named_file(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, path


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parsers(sub) -> None:
    p = sub.add_parser("instruct", help="instruction fine-tuning of a causal LM: composed LoRA modules (DoMIX) or a baseline",
                       description="Fine-tune a causal LM on prompt/response (or instruction/input/output) jsonl rows, loss on "
                                   "the response tokens only. domix: LoRA modules (--modules STORE and/or --adapter PATH) "
                                   "concatenated with a trainable bridge; lora/dora: PEFT adapters; mode: a gate over the experts of "
                                   "domix pretrain --method mode; full: every weight. "
                                   "Flags override the settings of --config.")
    p.add_argument("--config", help="YAML file of settings (keys as the flags)")
    p.add_argument("--train", help="jsonl (or a JSON list) of prompt/response or instruction/input/output rows")
    p.add_argument("--dev", help="dev jsonl (default: a seeded --dev-fraction of --train)")
    p.add_argument("--dev-fraction", type=float, help="share of --train held out when no --dev is given (default 0.05)")
    p.add_argument("--modules", help="module store to compose (the --out folder of domix pretrain)")
    p.add_argument("--domains", type=_comma_list, help="comma-separated modules of --modules, in order (default: all)")
    p.add_argument("--adapter", dest="adapters", action="append", metavar="PATH",
                   help="a PEFT LoRA adapter folder to compose (adapter_config.json + adapter_model.safetensors); repeat")
    p.add_argument("--model", help="base causal LM (default: the one the modules name)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--recipe", help=recipe_help("instruct"))
    p.add_argument("--method", choices=INSTRUCT, help=method_help({m: STAGE2[m] for m in INSTRUCT}, "default domix. "))
    p.add_argument("--target-modules", type=_comma_list, help="lora/dora: comma-separated layer names (default q_proj,k_proj,v_proj,up_proj,down_proj)")
    p.add_argument("--lora-rank", type=int, help="lora/dora rank (default: the modules' total rank, else 16); alpha is 2x the rank")
    p.add_argument("--template", choices=TEMPLATES, help="prompt template: alpaca (default), chat (the tokenizer's), plain")
    p.add_argument("--general", help="general-domain text (a file or folder, as pretrain's --domain PATH): the record gives "
                                     "the LM loss on it before and after training (retention)")
    p.add_argument("--general-blocks", type=int, help="sequences of --max-length tokens of --general that retention scores (default 64)")
    add_setting_flags(p, method_settings("instruct"))  # each method's own (the bridge's, mode_*), from the registry
    p.add_argument("--lr", type=float, help="(default 2e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup-ratio", type=float, help="(default 0.03)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps; overrides --warmup-ratio (the paper recipe: 100)")
    p.add_argument("--epochs", type=int, help="(default 2)")
    p.add_argument("--batch-size", type=int, help="(default 8)")
    p.add_argument("--max-length", type=int, help="tokens per example, prompt and response (default 256)")
    p.add_argument("--max-grad-norm", type=float, help="gradient clipping (default 1.0)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward to save memory (default: no)")
    p.add_argument("--train-limit", type=int, help="use a seeded sample of this many training examples")
    p.add_argument("--seed", type=int, help="batch order, dropout, LoRA init (default 42)")
    p.add_argument("--sample-seed", type=int, help="seed of the dev hold-out and --train-limit sample (default 0)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 200; also at every epoch's end)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, help="auto (default): bfloat16 on a GPU that has it, else float32")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--save-model", action=argparse.BooleanOptionalAction, default=None,
                   help="write the model (default: yes); --no-save-model keeps only result.json")

    p = sub.add_parser("eval-choice", help="multiple-choice evaluation of a causal LM (log-likelihood and generate-then-extract)",
                       description="Score a domix instruct model, an exported folder or any causal LM on multiple-choice "
                                   "jsonl files (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC, OBQA public formats, or "
                                   "context/choices/label) or LLM-Adapters' JSON list files. Every number says which protocol produced it.")
    p.add_argument("model", help="a domix instruct model/ folder, an exported folder, or a causal LM name or folder")
    p.add_argument("--base-model", help="the base to rebuild a domix instruct model on (default: the one its record names)")
    p.add_argument("--task", dest="tasks", action="append", type=_named_file, metavar="NAME=FILE", required=True,
                   help=f"a task and its jsonl or JSON list file (format read off its fields: {', '.join(FORMATS)}); repeat")
    p.add_argument("--protocol", choices=PROTOCOLS + ("both",), default="both",
                   help="loglikelihood (lm-eval style acc and acc_norm), generate (LLM-Adapters style), or both (default)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--details", help="write each question's scores or generated text as JSON here")
    p.add_argument("--limit", type=int, help="only the first N questions of each file")
    p.add_argument("--batch-size", type=int, default=8, help="questions scored at once (default 8)")
    p.add_argument("--max-length", type=int, default=2048, help="log-likelihood: inputs cut from the left to this many tokens")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generate: tokens generated per question")
    p.add_argument("--num-beams", type=int, default=1,
                   help="generate: beams of beam search (default 1, greedy; the published DoMIX evaluation uses 4); recorded with the scores")
    p.add_argument("--template", choices=TEMPLATES, help="generate: prompt template (default: the model's, else alpaca)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="for models that are not domix instruct folders")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")

    p = sub.add_parser("generate", help="generation (greedy or beam search) from a causal LM (a domix instruct model, an exported folder, any)")
    p.add_argument("model", help="a domix instruct model/ folder, an exported folder, or a causal LM name or folder")
    p.add_argument("--base-model", help="the base to rebuild a domix instruct model on (default: the one its record names)")
    p.add_argument("prompt", nargs="+", help="instruction(s); each is wrapped in the prompt template")
    p.add_argument("--template", choices=TEMPLATES, help="default: the model's, else alpaca")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt (default 128)")
    p.add_argument("--num-beams", type=int, default=1, help="beams of beam search (default 1: greedy)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="for models that are not domix instruct folders (default auto)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")


def run_instruct(args: argparse.Namespace) -> None:
    from domix.llm.config import FIELDS, InstructConfig
    from domix.llm.train import instruct
    from domix.settings import build_config

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    instruct(build_config(InstructConfig, args.config, overrides), overwrite=args.overwrite)


def run_eval_choice(args: argparse.Namespace) -> None:
    from domix.engine.runfolder import check_new_file
    from domix.llm.choice import evaluate_choice, format_results

    from domix.settings import unique_names

    tasks = unique_names(args.tasks, "--task")
    for written in (args.out, args.details):
        if written:
            check_new_file(written, list(tasks.values()))
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    report = evaluate_choice(args.model, tasks, protocols, args.out, args.limit, args.batch_size, args.max_length,
                             args.max_new_tokens, args.template, args.device, args.dtype, args.details, args.base_model,
                             args.num_beams)
    print(format_results(report))


def run_generate(args: argparse.Namespace) -> None:
    from domix.llm.choice import check_beams, generate
    from domix.llm.data import prompt_text
    from domix.llm.model import load_for_eval
    from domix.system import resolve_device

    check_beams(args.num_beams)  # before the model loads
    device = resolve_device(args.device)
    model, tokenizer, trained = load_for_eval(args.model, device, args.dtype, args.base_model)
    template = args.template or trained or "alpaca"
    prompts = [prompt_text(p, "", template, tokenizer) for p in args.prompt]
    for text in generate(model, tokenizer, prompts, args.max_new_tokens, 1, device, add_special_tokens=template != "chat",
                         num_beams=args.num_beams):
        print(text.strip())


COMMANDS = {"instruct": run_instruct, "eval-choice": run_eval_choice, "generate": run_generate}
