"""An instruction fine-tuning run of a causal LM (``domix instruct``).

Loss on the response tokens only; dev loss (per response token) after every epoch, the best epoch
kept. A labelled task (``--task``, llm/labelled.py) is scored by its label words instead: dev macro-F1
keeps the epoch, and the test split is scored by log-likelihood and by generation. As in the other runs
every step is a pure function of (seed, step, state), checkpoints are atomic, and rerunning the same
command resumes to the same model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from domix import atomic
from domix.base_model import model_reference, weights_fingerprint
from domix.batches import IGNORE_INDEX
from domix.corpus import read_corpus
from domix.engine.distributed import DataParallel, process_group
from domix.engine.loop import StepHook, TrainResult, mean_loss, my_rows, no_rows, step_batch
from domix.engine.predict import length_batches
from domix.engine.runfolder import RunFolder
from domix.engine.selection import DevScore, train_epochs
from domix.errors import DomixError
from domix.lm_loss import lm_losses
from domix.llm.choice import format_results, read_questions, score_choice
from domix.llm.config import PROTOCOLS, InstructConfig
from domix.llm.data import Example, collate, encode_examples, read_examples
from domix.llm.labelled import LabelledTask, generated_labels, read_labelled, score_loglikelihood
from domix.llm.labelled import scores as label_scores
from domix.llm.model import CAUSAL_KIND, build, load_causal, resolve_dtype, save_task_model
from domix.methods.registry import STAGE2, task_method
from domix.metrics import classification_scores, downsample_curve, majority_scores
from domix.retention import retention
from domix.store import base_of
from domix.system import autocast, peak_memory_mb, reset_peak_memory, resolve_device
from domix.tasks import seeded_sample

Rows = list[tuple[list[int], list[int]]]


def dev_loss(model: nn.Module, rows: Rows, pad_id: int, batch_size: int, device, multiple: int = 1, mixed: str | None = None) -> float:
    """Mean loss per response token over ``rows`` (engine.loop.mean_loss over their collated batches, each of rows of
    similar length: a sum over tokens, whatever the batches, with less padding computed); ``mixed``: the autocast dtype."""
    batches = length_batches([len(ids) for ids, _ in rows], batch_size)
    with autocast(mixed, device):
        return mean_loss(model, (collate([rows[i] for i in b], pad_id, multiple) for b in batches), "clm", device)


def train_dev_examples(cfg: InstructConfig) -> tuple[list[Example], list[Example]]:
    """The run's training and dev examples (``cfg.train``: a file, or several read one after another): ``cfg.dev``, else
    a seeded ``dev_fraction`` of the training examples; a seeded ``train_limit`` sample of the training examples (after
    the first ``train_skip`` of the seeded order)."""
    train = [e for path in ([cfg.train] if isinstance(cfg.train, str) else cfg.train) for e in read_examples(path, "train")]
    if cfg.dev:
        dev = read_examples(cfg.dev, "dev")
    else:  # hold out a seeded slice of train
        if len(train) < 2:
            raise DomixError(f"{cfg.train} holds one example, too few to hold a dev slice out; give more or pass --dev FILE")
        n_dev = min(len(train) - 1, max(1, round(cfg.dev_fraction * len(train))))
        held = set(seeded_sample(len(train), n_dev, cfg.sample_seed))
        dev = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
    train = [train[i] for i in seeded_sample(len(train), cfg.train_limit, cfg.sample_seed + 1, cfg.train_skip, "training examples")]
    return train, dev


def prepare(cfg: InstructConfig) -> dict:
    """Everything a run trains with, before any step: data, base, trainable model, optimizer groups.

    A benchmark can call this and time its own steps on ``batches``.
    """
    started = time.perf_counter()
    cfg.validate()
    labelled = (read_labelled(cfg.task, cfg.task_instruction, cfg.train_limit, cfg.eval_limit, cfg.sample_seed, cfg.score_test,
                              cfg.train_skip)
                if cfg.task else None)
    train_examples, dev_examples = (labelled.examples["train"], labelled.examples["dev"]) if labelled else train_dev_examples(cfg)
    if cfg.general:  # fail before training, not after
        read_corpus("general", cfg.general)
    # the multiple-choice test files, read before training (a bad file fails now); unread by a selection run
    choice = {name: read_questions(path) for name, path in cfg.choice_tests.items()} if cfg.score_test else {}
    method = task_method(cfg.method)
    modules = method.pieces(cfg)  # LoRA modules and adapters, or a method's own (MoDE's experts)
    base_name = cfg.model or base_of(modules)
    device = process_group().device(resolve_device(cfg.device))
    dtype = resolve_dtype(cfg.dtype, device)
    reset_peak_memory(device)
    model, tokenizer = load_causal(base_name, dtype)
    fingerprint = weights_fingerprint(model)
    method.check_base(modules, fingerprint)
    total_params = sum(p.numel() for p in model.parameters())
    model, groups = build(model, modules, cfg, method)
    model.to(device)
    method.place(model, cfg)  # a method's own placement after the move (MoDE's --mode-device-map)
    if labelled:  # every example kept, its input cut to fit: each label is scored whole (so none is dropped below)
        labelled.fit(tokenizer, cfg.template, cfg.max_length)
        train_examples, dev_examples = labelled.examples["train"], labelled.examples["dev"]
    train_rows, dropped = encode_examples(train_examples, tokenizer, cfg.template, cfg.max_length, "train")
    dev_rows, dev_dropped = encode_examples(dev_examples, tokenizer, cfg.template, cfg.max_length, "dev")
    return {"model": model, "tokenizer": tokenizer, "groups": groups, "modules": modules, "method": method,
            "base_name": base_name, "fingerprint": fingerprint, "device": device, "dtype": dtype,
            "total_params": total_params, "train": train_rows, "dev": dev_rows, "dropped": {"train": dropped, "dev": dev_dropped},
            "choice": choice,
            "labelled": labelled, "setup_s": time.perf_counter() - started}


def instruct(cfg: InstructConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict:
    """Fine-tune a causal LM on instruction data; returns the run's record.

    Launched over several processes (``torchrun``, ``accelerate launch``) it trains data-parallel, as
    ``domix finetune`` does: the same model as one process makes.
    """
    cfg.validate()
    ranks = process_group()
    folder = RunFolder.open(cfg, overwrite)
    started = time.perf_counter()
    run = prepare(cfg)
    model, tokenizer, device = run["model"], run["tokenizer"], run["device"]
    trainable = sum(p.numel() for g in run["groups"] for p in g["params"])
    folder.start(ranks)
    dropped = run["dropped"]
    print(f"domix: instruct {cfg.method} on {run['base_name']} ({len(run['train'])} train, {len(run['dev'])} dev examples"
          + (f"; {dropped['train'] + dropped['dev']} dropped, their prompt fills --max-length" if any(dropped.values()) else "")
          + f"); trainable {trainable:,} of {run['total_params']:,} parameters ({100 * trainable / run['total_params']:.2f}%)")

    labelled = run["labelled"]
    progress = _train(model, run["groups"], run["train"], run["dev"], cfg, tokenizer, device, folder.out / "checkpoint",
                      on_step, ranks.everyone(), labelled)
    state = progress.extra
    test_started = time.perf_counter()
    with autocast(cfg.autocast, device):  # scored as dev was (retention, below, stays in the weights' dtype: a fixed yardstick)
        scored = _labelled_record(model, tokenizer, labelled, state, cfg, device) if labelled else {}
        choice, choice_details = _choice_record(model, tokenizer, run["choice"], cfg, device)
    test_s = time.perf_counter() - test_started
    record = {
        "kind": CAUSAL_KIND,
        "method": cfg.method,
        "base_model": {"name": model_reference(run["base_name"]), "fingerprint": run["fingerprint"]},
        "head": [],  # the LM head stays the base's
        "template": cfg.template,
        "init_module": cfg.init_module,
        "dtype": run["dtype"],
        "max_length": cfg.max_length,
        "layers": None,  # the method's record says which layers it adapted, and what else it adds
        "lora_rank": None,
        **run["method"].record(model, run["modules"], cfg),
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "examples": {"train": len(run["train"]), "dev": len(run["dev"]), "dropped": dropped},
        "loss_curve": downsample_curve(progress.losses, 200),
        "dev_loss_before": state["dev_loss_before"],
        "dev_history": state["history"],
        "best_epoch": state["best_epoch"],
        "dev_loss": state["history"][state["best_epoch"] - 1]["loss"],
        "trainable_parameters": trainable,
        "total_parameters": run["total_params"],
        "trainable_percent": round(100 * trainable / run["total_params"], 3),
        "steps": progress.steps,
        "train_time_s": round(progress.train_seconds, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "peak_memory_mb": peak_memory_mb(device),
        "saved_model": cfg.save_model,
        **scored,
        **choice,
    }
    # the run's cost is that of training (and, for a labelled task, of scoring): retention loads a second copy of the base
    retention_started = time.perf_counter()
    record["retention"] = (retention(model, run["base_name"], cfg.general, cfg.max_length, cfg.general_blocks, cfg.batch_size, device)
                           if cfg.general else None)
    # where the wall time went (this session's part, for a resumed run): as domix finetune records it
    record["time_s"] = {"setup": round(run["setup_s"], 2), "train": round(progress.train_seconds, 2),
                        "dev": round(state.get("dev_seconds", 0.0), 2), "test": round(test_s, 2),
                        "retention": round(time.perf_counter() - retention_started, 2) if cfg.general else 0.0}
    save = (lambda where: save_task_model(model, tokenizer, record, where)) if cfg.save_model else None
    if choice_details and ranks.is_main:  # each question's scores and output, beside the record (the record keeps predictions)
        atomic.write_json(folder.out / CHOICE_DETAILS_FILE, choice_details)
    folder.finish_task(record, save, ranks, dev_loss=record["dev_loss"], best_epoch=record["best_epoch"],
                       **({"test": record["test"]} if labelled else {}))
    if not ranks.is_main:
        return record
    print(f"domix: instruct {cfg.method}: dev loss {record['dev_loss_before']:.4f} -> {record['dev_loss']:.4f} "
          f"(best epoch {record['best_epoch']}); trainable {record['trainable_percent']:.2f}%, "
          f"peak memory {record['peak_memory_mb']:.0f} MB, {record['wall_time_s']:.0f} s")
    if labelled:
        print(format_labelled(record))
    if choice:
        print(format_results(record["choice_test"]))
    return record


CHOICE_DETAILS_FILE = "choice_details.json"  # each --choice-test question's scores and generated output, keyed task/protocol


def _choice_record(model: nn.Module, tokenizer, read: dict, cfg: InstructConfig, device) -> tuple[dict, dict]:
    """The --choice-test files scored in both protocols (llm.choice.score_choice, as domix eval-choice scores them): the
    record's ``choice_test`` (the report) and ``choice_predictions`` ("task/protocol" -> each question's predicted and gold
    index, log-likelihood's length-normalised too: what paired statistics resample), and the details; empty without files."""
    if not read:
        return {}, {}
    report, details = score_choice(model, tokenizer, read, PROTOCOLS, cfg.template, device, batch_size=cfg.batch_size,
                                   num_beams=cfg.choice_beams)
    predictions = {}
    for key, rows in details.items():
        predictions[key] = {"predicted": [d["prediction"] for d in rows], "gold": [d["label"] for d in rows]}
        if key.endswith("/loglikelihood"):
            predictions[key]["predicted_norm"] = [d["prediction_norm"] for d in rows]
    return {"choice_test": report, "choice_predictions": predictions}, details


def _labelled_record(model: nn.Module, tokenizer, labelled: LabelledTask, state: dict, cfg: InstructConfig, device) -> dict:
    """What a labelled task's run records beside the LM record: the labels, the kept epoch's dev scores, the majority
    label's, and (unless a selection run) the test split scored in both protocols, each example's answer kept."""
    labels, best = labelled.labels, state["history"][state["best_epoch"] - 1]
    out = {"task": labelled.task.name, "labels": labels, "dev": {k: best[k] for k in ("accuracy", "macro_f1", "micro_f1")},
           "majority": majority_scores(labelled.gold, len(labels)), "test": None, "test_predictions": None,
           "test_generate": None, "generate_predictions": None}
    if not cfg.score_test:
        return out
    gold = labelled.gold["test"]
    loglik = score_loglikelihood(model, tokenizer, labelled.examples["test"], labels, cfg.template, cfg.max_length, device)
    predicted = loglik.argmax(1)
    answers, texts = generated_labels(model, tokenizer, labelled.examples["test"], labels, cfg.template, cfg.batch_size, device)
    out.update(test=classification_scores(predicted, gold, len(labels)),
               test_predictions={"predicted": predicted.tolist(), "gold": gold.tolist()},
               test_generate=label_scores(answers, gold, len(labels)),
               generate_predictions={"predicted": answers, "outputs": texts})
    return out


def format_labelled(record: dict) -> str:
    """A labelled task's scores, one line (the record's dev; test in both protocols, or 'test not read')."""
    d = record["dev"]
    line = f"domix: {record['task']}: dev accuracy {d['accuracy']:.4f}, macro-F1 {d['macro_f1']:.4f}"
    if record["test"] is None:
        return line + "; test not read (a selection run)"
    t, g = record["test"], record["test_generate"]
    return (line + f"; test by log-likelihood: accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}; generated: accuracy "
            f"{g['accuracy']:.4f}, macro-F1 {g['macro_f1']:.4f}, {100 * g['unanswered']:.1f}% no label "
            f"(majority label: macro-F1 {record['majority']['test']['macro_f1']:.4f})")


def _dev_scorer(model, dev_rows: Rows, cfg: InstructConfig, tokenizer, device, labelled: LabelledTask | None):
    """``score(epoch)``: the dev loss (per response token), and for a ``labelled`` task the label words' accuracy and
    macro-F1, which then decides (engine.selection.DevScore); a labelled task's dev loss is read off the label scores
    (the gold label's log-likelihood is the loss of the response its dev row predicts), not computed by a second pass."""
    pad_id = tokenizer.pad_token_id

    def score(epoch: int) -> DevScore:
        if labelled is None:
            value = dev_loss(model, dev_rows, pad_id, cfg.batch_size, device, cfg.pad_multiple, cfg.autocast)
            return DevScore(value, {"epoch": epoch, "loss": value}, f"dev loss {value:.4f}", {"loss": value})
        with autocast(cfg.autocast, device):
            loglik = score_loglikelihood(model, tokenizer, labelled.examples["dev"], labelled.labels, cfg.template,
                                         cfg.max_length, device)
        # the dev loss from the same pass: each example's gold label scores the response tokens its row predicts
        gold = labelled.gold["dev"]
        value = float(-loglik[torch.arange(len(gold)), gold].sum()) / max(_predicted(dev_rows), 1)
        s = classification_scores(loglik.argmax(1), gold, len(labelled.labels))
        return DevScore(s["macro_f1"], {"epoch": epoch, "loss": value, **s},
                        f"dev loss {value:.4f}, accuracy {s['accuracy']:.4f}, macro-F1 {s['macro_f1']:.4f}",
                        {"loss": value, "accuracy": s["accuracy"], "macro_f1": s["macro_f1"]})

    return score


def _train(model, groups, train_rows: Rows, dev_rows: Rows, cfg: InstructConfig, tokenizer, device, ckpt_dir: Path,
           on_step: StepHook | None, dp: DataParallel | None = None, labelled: LabelledTask | None = None) -> TrainResult:
    """Epochs over shuffled batches of the examples, the dev loss after every epoch picking the kept weights
    (engine.selection; ``extra`` adds dev_loss_before, the base's); for a ``labelled`` task the dev macro-F1 by the
    label words' log-likelihood picks them, as a classifier's does. A method that trains nothing (base) is scored
    once, as epoch 0, and kept as it is."""
    pad_id = tokenizer.pad_token_id
    score_dev = _dev_scorer(model, dev_rows, cfg, tokenizer, device, labelled)
    if not STAGE2[cfg.method].trains:  # the registry's word (a comparison plans such a row as untuned too)
        started = time.perf_counter()
        score = score_dev(0)
        print(f"domix: nothing trains ({cfg.method}): {score.said}")
        return TrainResult(extra={"history": [score.entry], "best_epoch": 1, "dev_loss_before": score.entry["loss"],
                                  "dev_seconds": time.perf_counter() - started})

    lengths = [len(ids) for ids, _ in train_rows]

    def step_loss(step: int) -> tuple[torch.Tensor, int]:
        rows = [train_rows[i] for i in step_batch(lengths, cfg.batch_size, cfg.seed, step, cfg.group_by_length)]
        mine = my_rows(rows, dp)
        if not mine:
            return no_rows(device), 0
        batch = collate(mine, pad_id, cfg.pad_multiple)
        # its rows' summed loss over the whole batch's response tokens: summed over processes, the batch's mean (the
        # cross-entropy in float32 under autocast too: lm_loss computes it so)
        with autocast(cfg.autocast, device):
            loss = lm_losses(model, batch["input_ids"].to(device), batch["labels"], "clm",
                             denominators=[max(_predicted(rows), 1)], attention_mask=batch["attention_mask"].to(device))[0]
        return loss, int(batch["attention_mask"].sum())

    def before() -> dict:
        return {"dev_loss_before": dev_loss(model, dev_rows, pad_id, cfg.batch_size, device, cfg.pad_multiple, cfg.autocast)}

    return train_epochs(model, groups, cfg, "instruct", len(train_rows), step_loss, score_dev, ckpt_dir, on_step, dp,
                        higher_is_better=labelled is not None, warmup_steps=cfg.warmup_steps, before=before)


def _predicted(rows: Rows) -> int:
    """Response tokens the causal loss predicts in ``rows`` (labels shift by one: the first is never predicted)."""
    return sum(sum(1 for label in labels[1:] if label != IGNORE_INDEX) for _, labels in rows)
