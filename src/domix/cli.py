"""The ``domix`` command: pretrain, finetune, export, evaluate, report, compare, modules, convert-gguf,
and for causal LMs instruct, eval-choice, generate (their flags in domix/llm/cli.py).

Each subcommand parses its flags and calls the library function of the same job; a
:class:`DomixError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from domix.console import set_verbose, verbose
from domix.errors import DomixError
from domix.finetuning.config import EvaluateSettings, FinetuneConfig
from domix.llm.config import InstructConfig
from domix.llm.cli import COMMANDS as LLM_COMMANDS
from domix.llm.cli import add_parsers as add_llm_parsers
from domix.methods.registry import CLASSIFIER, INSTRUCT, PIECE_DESCRIPTIONS, STAGE1, STAGE2, method_help, recipe_help
from domix.pretraining.config import PretrainConfig
from domix.settings import add_setting_flags, flag_values, from_flags
from domix.version import __version__


def add_run_command(sub, command: str, cls: type, methods: dict, help: str, description: str) -> None:
    """A subcommand that runs a recipe (pretrain, finetune, instruct): --config, --overwrite and a flag per setting of
    ``cls`` (settings.add_setting_flags: name, type, help and default from the field); the methods' choices and the
    recipes' help come from the registry."""
    p = sub.add_parser(command, help=help, description=description + " Flags override the settings of --config; unset flags "
                                                                      "keep them.")
    p.add_argument("--config", help="YAML file of settings (keys as the flags, with _ or -)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    add_setting_flags(p, cls, extra={"method": {"choices": list(methods), "help": method_help(methods, "")},
                                     "recipe": {"help": recipe_help(command)}})
    p.set_defaults(settings_class=cls)


def _run_recipe(args: argparse.Namespace) -> None:
    """Defaults, the recipe, the YAML file and the flags given, then the recipe's function of the same name
    (domix.pretrain, domix.finetune, domix.instruct)."""
    import domix
    from domix.settings import build_config

    cfg = build_config(args.settings_class, args.config, flag_values(args, args.settings_class))
    getattr(domix, args.command)(cfg, overwrite=args.overwrite)


def _run_export(args: argparse.Namespace) -> None:
    from domix.api import export
    from domix.llm.model import is_causal_task_model

    export(args.task_model, args.out, args.model, args.overwrite)
    loader = "AutoModelForCausalLM" if is_causal_task_model(args.task_model) else "AutoModelForSequenceClassification"
    print(f"domix: wrote {args.out} (loads with {loader}.from_pretrained)")


def _run_evaluate(args: argparse.Namespace) -> None:
    from domix.api import evaluate

    o = from_flags(args, EvaluateSettings)
    scores = evaluate(args.task_model, args.data, o.predictions, o.base_model, columns=o.columns(), split=o.split,
                      max_length=o.max_length)
    print(" ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def _run_report(args: argparse.Namespace) -> None:
    from domix.finetuning.run import format_table

    print(format_table(args.runs))


def _run_compare(args: argparse.Namespace) -> None:
    import shlex

    from domix.comparison.config import CompareConfig
    from domix.comparison.run import compare

    cfg = CompareConfig.from_yaml(args.config, out=args.out)
    if args.report_only:
        from domix.comparison.run import rewrite_report

        print("\n".join(f"domix: wrote {path}" for path in rewrite_report(cfg)))
        return
    part = args.methods is not None or args.tasks is not None or args.seeds is not None
    if part:
        cfg = cfg.narrowed(args.methods, args.tasks, args.seeds)
    command = shlex.join(["domix", "compare", args.config] + (["--out", args.out] if args.out else []))
    compare(cfg, overwrite=args.overwrite, dry_run=args.dry_run, command=command, write=not part)


def _run_modules(args: argparse.Namespace) -> None:
    from domix.store import describe_store

    print("\n".join(describe_store(args.store, PIECE_DESCRIPTIONS)))


def _run_convert(args: argparse.Namespace) -> None:
    from domix.base_model import convert_gguf
    from domix.engine.runfolder import check_new_output

    check_new_output(args.out, [args.gguf_file], args.overwrite)
    convert_gguf(args.gguf_file, args.out)
    print(f"domix: wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="domix", description="Modular domain adaptation of pretrained language models.")
    parser.add_argument("--version", action="version", version=f"domix {__version__}")
    parser.add_argument("--debug", action="store_true", help="with an error, also print where it was raised (a traceback)")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the load reports, warnings and progress bars of transformers, PEFT and datasets "
                             "(silenced by default; DOMIX_VERBOSE=1 does the same)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_command(sub, "pretrain", PretrainConfig, STAGE1,
                    help="train one LoRA domain module per corpus (domain-adaptive pre-training)",
                    description="Train one LoRA module per domain corpus on a frozen base model (--method domix), or a stage-1 "
                                "baseline: ncl_lora, joint_lora and ncl_full train one model for all domains, in one process.")
    add_run_command(sub, "finetune", FinetuneConfig, {m: STAGE2[m] for m in CLASSIFIER},
                    help="fine-tune an end task on composed domain modules (DoMIX) or a baseline",
                    description="Fine-tune a sequence classifier: the domain modules concatenated with a trainable bridge "
                                "(DoMIX), or a baseline (fixed bridge, PEFT LoRA/DoRA, full fine-tuning).")
    add_run_command(sub, "instruct", InstructConfig, {m: STAGE2[m] for m in INSTRUCT},
                    help="instruction fine-tuning of a causal LM: composed LoRA modules (DoMIX) or a baseline",
                    description="Fine-tune a causal LM on prompt/response (or instruction/input/output) jsonl rows, loss on the "
                                "response tokens only. domix: LoRA modules (--modules STORE and/or --adapter PATH) concatenated "
                                "with a trainable bridge; lora/dora: PEFT adapters; mode: a gate over the experts of domix "
                                "pretrain --method mode; full: every weight.")
    add_llm_parsers(sub)  # eval-choice, generate
    p = sub.add_parser("export", help="fold a task model into a plain transformers model folder")
    p.add_argument("task_model", help="the model/ folder of a domix finetune or domix instruct run")
    p.add_argument("out", help="a new folder for the plain transformers model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder at OUT (never the task model itself)")
    p.add_argument("--model", help="the base model to rebuild on (default: the one the task model's record names)")
    p = sub.add_parser("evaluate", help="score a task model (or an exported folder) on labeled data")
    p.add_argument("task_model", metavar="model", help="a task model folder or an exported folder")
    p.add_argument("data", help="a .jsonl, .csv, .tsv or .parquet file with 'text', optional 'text_pair', 'label', "
                                "a save_to_disk folder or a dataset name")
    add_setting_flags(p, EvaluateSettings)
    p = sub.add_parser("report", help="a table of finished finetune runs, side by side")
    p.add_argument("runs", nargs="+", help="finetune --out folders")
    p = sub.add_parser("compare", help="run methods x tasks x seeds (x domain orders) and write a report",
                       description="Run every method of a comparison config on the same tasks, seeds and domain orders "
                                   "(resumable: finished runs are reused), then write results.json, report.md and report.html.")
    p.add_argument("config", help="comparison YAML (see configs/compare-reference.yaml)")
    p.add_argument("--out", help="output folder (overrides the config's out)")
    p.add_argument("--overwrite", action="store_true", help="rerun jobs whose finished runs have other settings")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and whether each is finished, run nothing")
    p.add_argument("--methods", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   help="comma-separated: run only these of the config's methods (a part to run first; the full run reuses it)")
    p.add_argument("--tasks", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], help="comma-separated: only these tasks")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",") if x.strip()], help="comma-separated: only these seeds")
    p.add_argument("--report-only", action="store_true", help="run nothing: write report.md, report.html and plots/ again "
                                                               "from OUT/results.json (e.g. after a domix upgrade)")
    p = sub.add_parser("modules", help="list the domain modules of a store (LoRA modules, MixDA adapters or MoDE experts)")
    p.add_argument("store", help="a domix pretrain output folder")
    p = sub.add_parser("convert-gguf", help="de-quantise a GGUF model file once into a safetensors model folder")
    p.add_argument("gguf_file", help="a .gguf model file")
    p.add_argument("out", help="a new folder for the safetensors model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder at OUT")
    return parser


COMMANDS = {"pretrain": _run_recipe, "finetune": _run_recipe, "instruct": _run_recipe, "export": _run_export, "evaluate": _run_evaluate,
            "report": _run_report, "compare": _run_compare, "modules": _run_modules, "convert-gguf": _run_convert,
            **LLM_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_verbose(args.verbose or verbose())

    def command() -> None:
        from domix.system import configure_threads

        configure_threads()
        COMMANDS[args.command](args)

    return guarded(command, "domix", args.debug)


def guarded(action: Callable[[], None], prog: str = "domix", debug: bool = False,
            interrupted: str = "rerun the same command to resume from the last checkpoint") -> int:
    """Run ``action`` as a command does: its exit status, a DomixError as one line on stderr and status 2 (with
    ``debug``, where it was raised too), an interrupt as status 130 with what to do next."""
    try:
        action()
    except DomixError as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
    return 0
