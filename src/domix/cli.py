"""The ``domix`` command: pretrain, finetune, export, evaluate, report, compare, modules, convert-gguf,
and for causal LMs instruct, eval-choice, generate (their flags in domix/llm/cli.py).

Each subcommand parses its flags and calls the library function of the same job; a
:class:`DomixError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from domix import __version__
from domix.console import set_verbose, verbose
from domix.errors import DomixError
from domix.finetune.config import RunOptions
from domix.llm.cli import COMMANDS as LLM_COMMANDS
from domix.llm.cli import add_parsers as add_llm_parsers
from domix.methods.registry import STAGE1, STAGE2, method_help, method_settings, recipe_help
from domix.settings import add_setting_flags


def _domain(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train one LoRA domain module per corpus (domain-adaptive pre-training)",
                       description="Train one LoRA module per domain corpus on a frozen base model. "
                                   "Flags override the settings of --config; unset flags keep them.")
    p.add_argument("--config", help="YAML file of settings (keys as the flags, with _ or -)")
    p.add_argument("--model", help="base model: a local folder, a .gguf file, or a Hugging Face name")
    p.add_argument("--domain", dest="domains", action="append", type=_domain, metavar="NAME=PATH",
                   help="a domain and its corpus: .txt (a passage a line), .jsonl, .csv, .tsv or .parquet with a text column, "
                        "a folder of them, a save_to_disk folder, or a dataset name (NAME or NAME:CONFIG); repeat per domain")
    p.add_argument("--text-column", help="the corpora's text column or jsonl field (default 'text')")
    p.add_argument("--out", help="output folder: the module store")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--objective", choices=["auto", "mlm", "clm"], help="default: auto (masked LM for encoders, causal for decoders)")
    p.add_argument("--recipe", help=recipe_help("pretrain"))
    p.add_argument("--method", choices=list(STAGE1),
                   help=method_help(STAGE1, "default domix. The baselines (ncl_lora, joint_lora, ncl_full) train one model "
                                            "for all domains, in one process. "))
    p.add_argument("--general", help="a general-domain corpus (as --domain's PATH): MixDA's retention loss trains on it")
    add_setting_flags(p, method_settings("pretrain"))  # each method's own (mixda_*, mode_*), from the registry
    p.add_argument("--rank", type=int, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default 16)")
    p.add_argument("--dropout", type=float, help="LoRA dropout (default 0)")
    p.add_argument("--target-modules", help="comma-separated layer names or a regex (default: every linear layer of every block)")
    p.add_argument("--train-head", action=argparse.BooleanOptionalAction, default=None, help="also train the LM head (default: no)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 5e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup-ratio", type=float, help="linear warm-up share of the steps (default 0.1)")
    p.add_argument("--epochs", type=float, help="passes over each corpus (default 1; 0.25: a quarter of one, with its own schedule)")
    p.add_argument("--steps", type=int, help="steps per domain; overrides --epochs")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 16)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default 128)")
    p.add_argument("--max-grad-norm", type=float, help="gradient clipping (default 1.0)")
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--heldout-fraction", type=float, help="share of each corpus held out for evaluation (default 0.05)")
    p.add_argument("--heldout-max-blocks", type=int, help="cap on held-out sequences (default 256)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 100)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"], help="base model dtype (default float32)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="train several domains at once over one base (default: yes); --no-fused trains them one after another; "
                        "ignored by the baseline methods")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward instead of keeping them: far less memory, about a third more "
                        "compute (default: no)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def _run_pretrain(args: argparse.Namespace) -> None:
    from domix.pretrain.config import FIELDS, PretrainConfig
    from domix.pretrain.run import pretrain
    from domix.settings import build_config, unique_names

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    if overrides.get("domains"):
        overrides["domains"] = unique_names(overrides["domains"], "--domain")
    if isinstance(overrides.get("target_modules"), str) and not any(c in overrides["target_modules"] for c in "\\*()[]|"):
        overrides["target_modules"] = [t.strip() for t in overrides["target_modules"].split(",") if t.strip()]
    pretrain(build_config(PretrainConfig, args.config, overrides), overwrite=args.overwrite)


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune an end task on composed domain modules (DoMIX) or a baseline",
                       description="Fine-tune a sequence classifier: the domain modules concatenated with a trainable "
                                   "bridge (DoMIX), or a baseline (fixed bridge, PEFT LoRA/DoRA, full fine-tuning). "
                                   "Flags override the settings of --config.")
    p.add_argument("--config", help="YAML file of settings (keys as the flags)")
    p.add_argument("--task", help="folder with train, dev and test files (.jsonl, .csv, .tsv or .parquet with columns 'text', "
                                  "optional 'text_pair', 'label'), a save_to_disk folder, or a dataset name (NAME or NAME:CONFIG)")
    _add_task_columns(p)
    p.add_argument("--mix-task", dest="mix_tasks", action="append", metavar="TASK",
                   help="another task to train along with --task (repeat): the examples are shuffled together, each task "
                        "has its own labels of one head, and the dev mean picks the epoch; MoDE's stage 2 trains its gates on "
                        "such mixed target data. The saved model is --task's; result.json scores every task")
    p.add_argument("--splits", help="the task's split names where they are not train, dev, test, e.g. dev=validation "
                                    "(validation, valid and val are tried for dev anyway)")
    p.add_argument("--train", help="train file (overrides the task folder's)")
    p.add_argument("--dev", help="dev file")
    p.add_argument("--test", help="test file")
    p.add_argument("--modules", help="module store: the --out folder of domix pretrain")
    p.add_argument("--domains", type=lambda s: [d for d in s.split(",") if d], help="comma-separated modules to compose, in order (default: all)")
    p.add_argument("--model", help="base model (default: the one the modules were trained on)")
    p.add_argument("--out", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--recipe", help=recipe_help("finetune"))
    p.add_argument("--method", choices=list(STAGE2), help=method_help(STAGE2, "default domix. "))
    p.add_argument("--general", help="a general-domain corpus: the record gives the language-model loss on it before and after (retention)")
    p.add_argument("--general-blocks", type=int, help="sequences of --max-length tokens of --general that retention scores (default 64)")
    p.add_argument("--lora-rank", type=int, help="rank for lora/dora from the base (default: the modules' total rank, else 8)")
    p.add_argument("--init-module", help="lora/dora: start from this module of --modules (its rank, alpha and weights)")
    p.add_argument("--save-model", action=argparse.BooleanOptionalAction, default=None,
                   help="write the task model (default: yes); --no-save-model keeps only result.json")
    add_setting_flags(p, method_settings("finetune"))  # each method's own (the bridge's, mode_*), from the registry
    add_setting_flags(p, (RunOptions,))
    p.add_argument("--lr", type=float, help="learning rate of B_cat and the head (default 3e-5)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay of B_cat and the head (default 0)")
    p.add_argument("--warmup-ratio", type=float, help="(default 0: linear decay from the start)")
    p.add_argument("--epochs", type=int, help="(default 5)")
    p.add_argument("--batch-size", type=int, help="(default 16)")
    p.add_argument("--max-length", type=int, help="tokens per example (default 128)")
    p.add_argument("--max-grad-norm", type=float, help="gradient clipping (default 1.0)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward instead of keeping them: far less memory, about a third more "
                        "compute, the same weights (default: no)")
    p.add_argument("--select-metric", choices=["accuracy", "macro_f1", "micro_f1"], help="dev metric that picks the kept epoch")
    p.add_argument("--train-limit", type=int, help="use a seeded sample of this many training examples")
    p.add_argument("--eval-limit", type=int, help="use a seeded sample of this many dev and test examples")
    p.add_argument("--seed", type=int, help="head init, batch order and dropout (default 42)")
    p.add_argument("--sample-seed", type=int, help="seed of the --train-limit/--eval-limit samples (default 0, the same for every --seed)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 200; also at every epoch's end)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"], help="base model dtype (default float32)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def _add_task_columns(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", help="the task's text column (default 'text')")
    p.add_argument("--text-pair-column", help="the second text of a pair (default 'text_pair' where there is one)")
    p.add_argument("--label-column", help="the task's label column (default 'label'; a ClassLabel's names are used)")


def _run_finetune(args: argparse.Namespace) -> None:
    from domix.finetune.config import FIELDS, FinetuneConfig
    from domix.finetune.run import finetune
    from domix.settings import build_config

    overrides = {k: v for k, v in vars(args).items() if k in FIELDS}
    finetune(build_config(FinetuneConfig, args.config, overrides), overwrite=args.overwrite)


def _run_export(args: argparse.Namespace) -> None:
    from domix.api import export
    from domix.llm.model import is_causal_task_model

    export(args.task_model, args.out, args.model, args.overwrite)
    loader = "AutoModelForCausalLM" if is_causal_task_model(args.task_model) else "AutoModelForSequenceClassification"
    print(f"domix: wrote {args.out} (loads with {loader}.from_pretrained)")


def _run_evaluate(args: argparse.Namespace) -> None:
    from domix.api import evaluate
    from domix.sources import Columns

    columns = Columns(args.text_column or "text", args.text_pair_column, args.label_column or "label")
    scores = evaluate(args.task_model, args.data, args.predictions, args.base_model, columns=columns, split=args.split,
                      max_length=args.max_length)
    print(" ".join(f"{k} {v:.4f}" for k, v in scores.items()))


def _run_report(args: argparse.Namespace) -> None:
    from domix.finetune.run import format_table

    print(format_table(args.runs))


def _run_compare(args: argparse.Namespace) -> None:
    import shlex

    from domix.compare.config import CompareConfig
    from domix.compare.run import compare

    cfg = CompareConfig.from_yaml(args.config, out=args.out)
    if args.report_only:
        from domix.compare.run import rewrite_report

        print("\n".join(f"domix: wrote {path}" for path in rewrite_report(cfg)))
        return
    part = args.methods is not None or args.tasks is not None or args.seeds is not None
    if part:
        cfg = cfg.narrowed(args.methods, args.tasks, args.seeds)
    command = shlex.join(["domix", "compare", args.config] + (["--out", args.out] if args.out else []))
    compare(cfg, overwrite=args.overwrite, dry_run=args.dry_run, command=command, write=not part)


def _run_modules(args: argparse.Namespace) -> None:
    from domix.store import describe_store

    print("\n".join(describe_store(args.store)))


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
    _add_pretrain(sub)
    _add_finetune(sub)
    add_llm_parsers(sub)  # instruct, eval-choice, generate
    p = sub.add_parser("export", help="fold a task model into a plain transformers model folder")
    p.add_argument("task_model", help="the model/ folder of a domix finetune or domix instruct run")
    p.add_argument("out", help="a new folder for the plain transformers model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder at OUT (never the task model itself)")
    p.add_argument("--model", help="the base model to rebuild on (default: the one the task model's record names)")
    p = sub.add_parser("evaluate", help="score a task model (or an exported folder) on labeled data")
    p.add_argument("task_model", metavar="model", help="a task model folder or an exported folder")
    p.add_argument("data", help="a .jsonl, .csv, .tsv or .parquet file with 'text', optional 'text_pair', 'label', "
                                "a save_to_disk folder or a dataset name")
    _add_task_columns(p)
    p.add_argument("--split", help="the split of a dataset with several (default test)")
    p.add_argument("--predictions", help="write one prediction a line to this jsonl file")
    p.add_argument("--max-length", type=int, default=128, help="for exported folders (task models know theirs)")
    p.add_argument("--model", dest="base_model", help="the base model to rebuild a task model on (default: the one its record names)")
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


COMMANDS = {"pretrain": _run_pretrain, "finetune": _run_finetune, "export": _run_export, "evaluate": _run_evaluate,
            "report": _run_report, "compare": _run_compare, "modules": _run_modules, "convert-gguf": _run_convert,
            **LLM_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_verbose(args.verbose or verbose())
    try:
        from domix.system import configure_threads

        configure_threads()
        COMMANDS[args.command](args)
    except DomixError as err:
        if args.debug:
            traceback.print_exc()
        print(f"domix: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("domix: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0
