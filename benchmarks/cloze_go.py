"""A go/no-go for commonsense at this model size: can a LoRA learn OBQA in cloze form at all?

The commonsense table's trained rows answer from their answers' distribution alone (benchmarks/results/commonsense/
report.md). Before more of that setting is built, one cheap question: LoRA on OpenBookQA's published training file
with the correct option's text as the response (cloze: ``Question: ...\\nAnswer:`` then the option, as the
log-likelihood protocol scores it), scored by acc_norm on OBQA's 500 test questions, against the base model. A gain
of at least ``--go`` points (6) says a 135M model learns this setting, and ARC-e, ARC-c and PIQA in cloze form join
the comparison; less says it does not.

Steps (each skipped when its output is there, so the same command resumes): the cloze training file
(``OUT/obqa-cloze.jsonl``), ``domix instruct --method lora --template plain`` on it (``OUT/lora``), ``domix eval-choice
--protocol loglikelihood`` of the base and of the LoRA on the test file (``OUT/eval-*.json``), and ``OUT/decision.json``.

    python benchmarks/cloze_go.py --out runs/cloze-go --json benchmarks/results/cloze_go.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "commonsense"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=".cache/smollm2-135m")
    parser.add_argument("--train", default=str(DATA / "obqa" / "train.json"), help="OBQA's training file (LLM-Adapters format)")
    parser.add_argument("--test", default=str(DATA / "obqa" / "test.json"), help="OBQA's test file (LLM-Adapters format)")
    parser.add_argument("--out", default="runs/cloze-go")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train-limit", type=int, help="a seeded sample of the training rows (tests)")
    parser.add_argument("--test-limit", type=int, help="only the first N test questions (tests)")
    parser.add_argument("--go", type=float, default=6.0, help="the acc_norm gain over the base, in points, that says go")
    parser.add_argument("--json", help="also write the decision here")
    args = parser.parse_args()

    from domix import atomic
    from domix.llm.choice import cloze_rows, evaluate_choice, read_questions
    from domix.llm.config import InstructConfig
    from domix.llm.train import instruct
    from domix.system import configure_threads

    configure_threads()
    out = Path(args.out)
    train_file = out / "obqa-cloze.jsonl"
    if not train_file.is_file():
        _, questions = read_questions(args.train, "llm_adapters")
        atomic.write_text(train_file, "".join(json.dumps(row) + "\n" for row in cloze_rows(questions)))
    run = out / "lora"
    if not (run / "result.json").is_file():
        instruct(InstructConfig(train=str(train_file), out=str(run), method="lora", model=args.model, lora_rank=args.rank,
                                template="plain", lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                                max_length=args.max_length, train_limit=args.train_limit))
    scores = {}
    for name, source in (("base", args.model), ("lora", str(run / "model"))):
        file = out / f"eval-{name}.json"
        if not file.is_file():
            evaluate_choice(source, {"obqa": args.test}, ("loglikelihood",), out=str(file), limit=args.test_limit,
                            template="plain")
        scores[name] = {r["metric"]: r["value"] for r in atomic.read_json(file)["results"]} | {
            "n": atomic.read_json(file)["results"][0]["n"]}
    record = atomic.read_json(run / "result.json")
    gain = 100 * (scores["lora"]["acc_norm"] - scores["base"]["acc_norm"])
    decision = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "scores": scores, "gain_points": round(gain, 2),
                "go": gain >= args.go, "training": {"examples": record["examples"], "steps": record["steps"],
                                                    "dev_loss_before": record["dev_loss_before"], "dev_loss": record["dev_loss"],
                                                    "train_time_s": record["train_time_s"]}}
    atomic.write_json(out / "decision.json", decision)
    if args.json:
        atomic.write_json(Path(args.json), decision)
    print(f"obqa acc_norm: base {100 * scores['base']['acc_norm']:.1f}, LoRA {100 * scores['lora']['acc_norm']:.1f} "
          f"({gain:+.1f} points, {scores['lora']['n']} questions); acc: base {100 * scores['base']['acc']:.1f}, "
          f"LoRA {100 * scores['lora']['acc']:.1f}; dev loss {record['dev_loss_before']:.3f} -> {record['dev_loss']:.3f}")
    print(f"go/no-go at +{args.go:g} points: {'GO: cloze commonsense is learnable here' if decision['go'] else 'NO-GO: not at this size'}")


if __name__ == "__main__":
    main()
