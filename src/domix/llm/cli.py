"""The causal-LM subcommands of ``domix`` besides instruct (a run command of domix/cli.py): eval-choice, generate."""

from __future__ import annotations

import argparse

from domix.llm.config import DTYPE_CHOICES, FORMATS, PROTOCOLS, TEMPLATES, ChoiceSettings, GenerateSettings
from domix.settings import add_setting_flags, from_flags, named_path


LOAD_CHOICES = {"template": {"choices": TEMPLATES}, "dtype": {"choices": DTYPE_CHOICES}}


def add_parsers(sub) -> None:
    p = sub.add_parser("eval-choice", help="multiple-choice evaluation of a causal LM (log-likelihood and generate-then-extract)",
                       description="Score a domix instruct model, an exported folder or any causal LM on multiple-choice "
                                   "jsonl files (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC, OBQA public formats, or "
                                   "context/choices/label) or LLM-Adapters' JSON list files. Every number says which protocol produced it.")
    p.add_argument("model", help="a domix instruct model/ folder, an exported folder, or a causal LM name or folder")
    p.add_argument("--task", dest="tasks", action="append", type=named_path, metavar="NAME=FILE", required=True,
                   help=f"a task and its jsonl or JSON list file (format read off its fields: {', '.join(FORMATS)}); repeat")
    add_setting_flags(p, ChoiceSettings, extra={"protocol": {"choices": PROTOCOLS + ("both",)}, **LOAD_CHOICES})

    p = sub.add_parser("generate", help="generation (greedy or beam search) from a causal LM (a domix instruct model, an exported folder, any)")
    p.add_argument("model", help="a domix instruct model/ folder, an exported folder, or a causal LM name or folder")
    p.add_argument("prompt", nargs="+", help="instruction(s); each is wrapped in the prompt template")
    add_setting_flags(p, GenerateSettings, extra=LOAD_CHOICES)


def run_eval_choice(args: argparse.Namespace) -> None:
    from domix.engine.runfolder import check_new_file
    from domix.llm.choice import evaluate_choice, format_results
    from domix.settings import unique_names

    tasks, o = unique_names(args.tasks, "--task"), from_flags(args, ChoiceSettings)
    for written in (o.out, o.details):
        if written:
            check_new_file(written, list(tasks.values()))
    protocols = PROTOCOLS if o.protocol == "both" else (o.protocol,)
    report = evaluate_choice(args.model, tasks, protocols, o.out, o.limit, o.batch_size, o.max_length, o.max_new_tokens,
                             o.template, o.device, o.dtype, o.details, o.base_model, o.num_beams)
    print(format_results(report))


def run_generate(args: argparse.Namespace) -> None:
    from domix.llm.choice import check_beams, generate
    from domix.llm.data import prompt_text
    from domix.llm.model import load_for_eval
    from domix.system import resolve_device

    o = from_flags(args, GenerateSettings)
    check_beams(o.num_beams)  # before the model loads
    device = resolve_device(o.device)
    model, tokenizer, trained = load_for_eval(args.model, device, o.dtype, o.base_model)
    template = o.template or trained or "alpaca"
    prompts = [prompt_text(p, "", template, tokenizer) for p in args.prompt]
    for text in generate(model, tokenizer, prompts, o.max_new_tokens, 1, device, add_special_tokens=template != "chat",
                         num_beams=o.num_beams):
        print(text.strip())


COMMANDS = {"eval-choice": run_eval_choice, "generate": run_generate}
