"""An end-task fine-tuning run: task data, model, epochs with dev selection, test scores.

Like pre-training, every step is a pure function of (seed, step, state), checkpoints are
atomic, and rerunning the same command resumes. The epoch with the best dev score is kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from domix import atomic
from domix.base_model import model_reference, weights_fingerprint
from domix.corpus import read_corpus
from domix.engine.distributed import DataParallel, process_group
from domix.engine.loop import StepHook, TrainResult, my_rows, no_rows, share, step_batch
from domix.engine.predict import predict
from domix.engine.runfolder import RESULT_FILE, RunFolder
from domix.engine.selection import DevScore, train_epochs
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.finetuning.mixture import Mixture, keep_own_rows
from domix.finetuning.model import classification_model, load_tokenizer_for, save_task_model
from domix.methods.base import Probe
from domix.methods.registry import task_method
from domix.metrics import downsample_curve, majority_scores
from domix.retention import retention
from domix.store import base_of
from domix.system import DTYPES, autocast, peak_memory_mb, reset_peak_memory, resolve_device
from domix.tasks import encode, pad_batch, read_task, subsample




def finetune(cfg: FinetuneConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict:
    """Fine-tune a task model; returns its record (scores, trainable share, memory, time).

    Launched over several processes (``torchrun``, ``accelerate launch``) it trains data-parallel: each
    process takes its slice of every batch and the gradients are summed, so the task model is the one
    a single process makes (up to float summation order; dropout draws its masks per slice).
    """
    cfg.validate()
    ranks = process_group()
    folder = RunFolder.open(cfg, overwrite)
    # a selection run (--no-score-test) never reads the test split: nothing it records can depend on it
    held_out = ("dev", "test") if cfg.score_test else ("dev",)
    task = read_task(cfg.task, columns=cfg.columns(), splits=cfg.splits, without_test=not cfg.score_test,
                     train=cfg.train, dev=cfg.dev, test=cfg.test if cfg.score_test else None)
    mixture = Mixture([task] + [read_task(path, columns=cfg.columns(), splits=cfg.splits, without_test=not cfg.score_test)
                                for path in cfg.mix_tasks or []])
    for each in mixture.tasks:
        subsample(each, "train", cfg.train_limit, cfg.sample_seed)
        for split in held_out:
            subsample(each, split, cfg.eval_limit, cfg.sample_seed)
    if cfg.general:  # fail before training, not after
        read_corpus("general", cfg.general)
    method = task_method(cfg.method)
    pieces = method.pieces(cfg)
    base_name = cfg.model or base_of(pieces)
    device = ranks.device(resolve_device(cfg.device))
    reset_peak_memory(device)
    started = time.perf_counter()

    model, head = classification_model(base_name, mixture.labels, DTYPES[cfg.dtype], cfg.seed)
    shapes = ", ".join(f"{name} {'x'.join(map(str, p.shape))}" for name, p in model.named_parameters() if name in head)
    print(f"domix: added a classification head for {len(mixture.labels)} labels ({shapes}), randomly initialised")
    tokenizer = load_tokenizer_for(base_name, model)
    fingerprint = weights_fingerprint(model)
    method.check_base(pieces, fingerprint)
    total_params = sum(p.numel() for p in model.parameters())
    model, groups = method.build(model, head, pieces, cfg)
    model.to(device)
    method.place(model, cfg)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    folder.start(ranks)
    sizes = ", ".join(f"{len(task.splits[s].texts)} {s}" for s in task.splits) + ("" if cfg.score_test else "; test not read")
    print(f"domix: {cfg.method} on task {task.name!r} ({len(task.labels)} labels; {sizes}); trainable {trainable:,} "
          f"of {total_params:,} parameters ({100 * trainable / total_params:.2f}%)")
    for other in mixture.tasks[1:]:
        print(f"domix: mixed in task {other.name!r} ({len(other.labels)} labels, {len(other.splits['train'].texts)} train): "
              "shuffled with the task's examples, each scored on its own labels")

    rows = {s: [encode(t.splits[s], tokenizer, cfg.max_length) for t in mixture.tasks] for s in held_out}
    labels = {s: task.label_ids(s) for s in ("train", *held_out)}
    setup_s = time.perf_counter() - started
    progress = _train(model, groups, mixture, rows, cfg, tokenizer, device, folder.out / "checkpoint", on_step, ranks.everyone())
    state = progress.extra
    test_scores, mixed_scores, test_predictions = None, [], None
    test_started = time.perf_counter()
    if cfg.score_test:
        test_logits = [predict(model, r, tokenizer.pad_token_id, cfg.batch_size, device, cfg.autocast) for r in rows["test"]]
        test_scores, *mixed_scores = mixture.scores(test_logits, "test")
        # each example's predicted label, beside the gold ones: paired statistics resample the test examples
        test_predictions = {"predicted": mixture.predictions(test_logits[0], 0).tolist(), "gold": labels["test"].tolist()}
    if len(mixture.tasks) > 1:  # the saved model: the run's own task's rows of the joint head
        keep_own_rows(model, head, task.labels)
    probe_split = "test" if cfg.score_test else "dev"  # the inputs the record's bridge usage is measured on
    added = method.record(model, pieces, cfg, Probe(rows[probe_split][0], tokenizer.pad_token_id, device))
    # the run's cost is that of training and testing: retention below loads a second copy of the base
    peak_mb, wall_s, test_s = peak_memory_mb(device), time.perf_counter() - started, time.perf_counter() - test_started
    retained, retention_started = None, time.perf_counter()
    if cfg.general:
        retained = retention(model, base_name, cfg.general, cfg.max_length, cfg.general_blocks, cfg.batch_size, device)
    record = {
        "method": cfg.method,
        "task": task.name,
        "labels": task.labels,
        "base_model": {"name": model_reference(base_name), "fingerprint": fingerprint},
        "init_module": cfg.init_module,
        "head": head,
        "dtype": cfg.dtype,
        "max_length": cfg.max_length,
        "layers": None,  # the method's record below says which layers it adapted, and what else it adds
        "loss_curve": downsample_curve(progress.losses, 200),
        "dev_history": state["history"],
        "best_epoch": state["best_epoch"],
        "dev": state["history"][state["best_epoch"] - 1],
        "test": test_scores,
        "test_predictions": test_predictions,
        "majority": majority_scores(labels, len(task.labels)),
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_percent": round(100 * trainable / total_params, 3),
        "steps": progress.steps,
        "train_time_s": round(progress.train_seconds, 2),
        "wall_time_s": round(wall_s, 2),
        # where the wall time went (this session's part, for a resumed run): loading and setup, training steps,
        # dev scoring at the epochs' ends, the test split with the record's probes; retention comes after
        "time_s": {"setup": round(setup_s, 2), "train": round(progress.train_seconds, 2), "dev": round(state.get("dev_seconds", 0.0), 2),
                   "test": round(test_s, 2), "retention": round(time.perf_counter() - retention_started, 2) if cfg.general else 0.0},
        "peak_memory_mb": peak_mb,
        "retention": retained,
        "saved_model": cfg.save_model,
        "mixture": {"tasks": [t.name for t in mixture.tasks[1:]], "paths": cfg.mix_tasks,
                    "test": {t.name: s for t, s in zip(mixture.tasks[1:], mixed_scores)},
                    "dev": state["history"][state["best_epoch"] - 1].get("mixed")} if mixed_scores else None,
    }
    record.update(added)
    save = (lambda where: save_task_model(model, tokenizer, record, where)) if cfg.save_model else None
    folder.finish_task(record, save, ranks, test=test_scores, best_epoch=state["best_epoch"])
    if ranks.is_main:
        print(format_record(record))
    return record


def _train(model, groups, mixture: Mixture, rows: dict[str, list], cfg: FinetuneConfig, tokenizer, device, ckpt_dir: Path,
           on_step: StepHook | None, dp: DataParallel | None = None) -> TrainResult:
    """Epochs over shuffled batches of the training examples (of every task of ``mixture``), the dev scores after
    every epoch (their mean over the tasks, ``cfg.select_metric``) picking the kept weights (engine.selection). With
    ``dp``, this process trains on its slice of each batch (every process scores the whole dev set, so all keep alike)."""
    pad_id = tokenizer.pad_token_id
    train_rows, train_labels, owner = mixture.train_set(tokenizer, cfg.max_length)
    lengths = [len(r) for r in train_rows]

    def step_loss(step: int) -> tuple[torch.Tensor, int]:
        idx = step_batch(lengths, cfg.batch_size, cfg.seed, step, cfg.group_by_length)
        mine = my_rows(idx, dp)
        if not mine:
            return no_rows(device), 0
        batch = pad_batch([train_rows[i] for i in mine], pad_id)
        with autocast(cfg.autocast, device):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        logits = logits.float()  # the loss in float32, under autocast too
        if len(mixture.tasks) > 1:  # each example against its own task's labels only
            logits = logits + mixture.mask(owner[mine], logits.dtype).to(device)
        loss = torch.nn.functional.cross_entropy(logits, train_labels[mine].to(device))  # the mean over its examples
        return share(loss, len(mine), len(idx)), int(batch["attention_mask"].sum())

    def score_dev(epoch: int) -> DevScore:
        every = mixture.scores([predict(model, r, pad_id, cfg.batch_size, device, cfg.autocast) for r in rows["dev"]], "dev")
        scores = dict(every[0])
        if len(every) > 1:
            scores["mixed"] = {t.name: s for t, s in zip(mixture.tasks[1:], every[1:])}
        return DevScore(sum(s[cfg.select_metric] for s in every) / len(every), scores,
                        f"dev accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}",
                        {m: scores[m] for m in ("accuracy", "macro_f1")})

    label = f"task {mixture.tasks[0].name!r}" + (f" + {len(mixture.tasks) - 1} mixed" if len(mixture.tasks) > 1 else "")
    return train_epochs(model, groups, cfg, label, len(train_rows), step_loss, score_dev, ckpt_dir, on_step, dp, higher_is_better=True)


def format_record(record: dict) -> str:
    t, d = record["test"], record["dev"]
    split, m = ("test", record["majority"]["test"]) if t else ("dev", record["majority"]["dev"])
    scores = (f"test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, micro-F1 {t['micro_f1']:.4f}" if t else
              "test not scored (a selection run)")
    return (f"domix: {record['method']} on {record['task']}: best epoch {record['best_epoch']} "
            f"(dev accuracy {d['accuracy']:.4f}, macro-F1 {d['macro_f1']:.4f}); {scores} (majority class on {split}: "
            f"{m['accuracy']:.4f}, {m['macro_f1']:.4f}); trainable {record['trainable_percent']:.2f}%, "
            f"peak memory {record['peak_memory_mb']:.0f} MB, {record['wall_time_s']:.0f} s")


def format_table(run_folders: list[str]) -> str:
    """Test scores, trainable share, memory and time of finished runs, one row each."""
    header = ("run", "method", "task", "test acc", "macro-F1", "majority F1", "trainable %", "peak MB", "time s")
    rows = [header]
    for folder in run_folders:
        record_file = Path(folder) / RESULT_FILE
        if not record_file.is_file():
            raise DomixError(f"{folder} holds no finished finetune run (no {RESULT_FILE})")
        r = atomic.read_json(record_file)
        majority = r.get("majority", {}).get("test")  # runs before it was recorded have none
        rows.append((str(folder), r["method"], r["task"], f"{r['test']['accuracy']:.4f}", f"{r['test']['macro_f1']:.4f}",
                     f"{majority['macro_f1']:.4f}" if majority else "-",
                     f"{r['trainable_percent']:.2f}", f"{r['peak_memory_mb']:.0f}", f"{r['wall_time_s']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
