"""An end-task fine-tuning run: task data, model, epochs with dev selection, test scores.

Like pre-training, every step is a pure function of (seed, step, state), checkpoints are
atomic, and rerunning the same command resumes. The epoch with the best dev score is kept.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from domix import atomic, checkpoint
from domix.base_model import resolve_target_modules, weights_fingerprint
from domix.bridge.model import bridge_usage, bridged_layers
from domix.corpus import read_corpus
from domix.errors import DomixError
from domix.finetune.config import MODULE_METHODS, FinetuneConfig
from domix.finetune.model import (
    build_domix, build_full, build_head, build_peft, classification_model, load_tokenizer_for, save_task_model, trainable_state,
)
from domix.metrics import classification_scores, downsample_curve
from domix.mixda.model import build_mixda, load_adapters, task_record as mixda_record
from domix.mode.model import build_task_model as build_mode, load_expert_store
from domix.mode.model import place as place_experts, task_record as mode_record
from domix.pretrain.loop import batch_rows, step_seed
from domix.retention import retention
from domix.runfolder import RUN_FILE, check_out, clear
from domix.store import DomainModule, check_base, load_store, shared_initialisation
from domix.system import DTYPES, peak_memory_mb, reset_peak_memory, resolve_device
from domix.tasks import Task, encode, pad_batch, read_task

StepHook = Callable[[int, float, nn.Module], None]
RESULT_FILE = "result.json"  # the run's record: scores, trainable share, memory, time


@torch.no_grad()
def predict(model: nn.Module, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Logits for tokenized examples, in order."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        batch = pad_batch(rows[start : start + batch_size], pad_id)
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out)


def _subsample(task: Task, split: str, limit: int | None, seed: int) -> None:
    s = task.splits[split]
    if limit is None or limit >= len(s.texts):
        return
    keep = torch.randperm(len(s.texts), generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
    s.texts = [s.texts[i] for i in keep]
    s.labels = [s.labels[i] for i in keep]
    if s.pairs is not None:
        s.pairs = [s.pairs[i] for i in keep]


def _modules(cfg: FinetuneConfig) -> list[DomainModule]:
    """The modules a run uses: the ones it composes, the one it starts from, or (for a rank and layers) all."""
    if not cfg.modules or cfg.method in ("mixda", "mode"):  # no LoRA modules: mixda.model.load_adapters, mode.model.load_expert_store
        return []
    if cfg.init_module:
        return load_store(cfg.modules, [cfg.init_module])
    return load_store(cfg.modules, cfg.domains)


def finetune(cfg: FinetuneConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict:
    """Fine-tune a task model; returns its record (scores, trainable share, memory, time)."""
    cfg.validate()
    out = Path(cfg.out)
    previous = check_out(out, cfg.to_dict(), FinetuneConfig.RESUME_FREE, overwrite)
    task = read_task(cfg.task, train=cfg.train, dev=cfg.dev, test=cfg.test)
    _subsample(task, "train", cfg.train_limit, cfg.sample_seed)
    for split in ("dev", "test"):
        _subsample(task, split, cfg.eval_limit, cfg.sample_seed)
    if cfg.general:  # fail before training, not after
        read_corpus("general", cfg.general)
    modules = _modules(cfg)
    adapters = load_adapters(cfg.modules, cfg.domains) if cfg.method == "mixda" else []
    experts = load_expert_store(cfg.modules, cfg.domains) if cfg.method == "mode" else []
    base_name = cfg.model or ((modules or adapters or experts)[0].manifest or {}).get("base_model", {}).get("name")
    if not base_name:
        raise DomixError("the modules do not say which base model they were trained on; pass --model")
    device = resolve_device(cfg.device)
    reset_peak_memory(device)
    started = time.perf_counter()

    model, head = classification_model(base_name, task.labels, DTYPES[cfg.dtype], cfg.seed)
    tokenizer = load_tokenizer_for(base_name, model)
    fingerprint = weights_fingerprint(model)
    if cfg.method != "full":
        check_base(modules, fingerprint)
    total_params = sum(p.numel() for p in model.parameters())
    if cfg.method in MODULE_METHODS:
        warning = shared_initialisation(modules)
        if warning:
            print(warning)
        groups = build_domix(model, head, modules, cfg)
    elif cfg.method == "full":
        groups = build_full(model, cfg)
    elif cfg.method == "head":
        groups = build_head(model, head, cfg)
    elif cfg.method == "mixda":
        check_base(adapters, fingerprint, "MixDA adapters of domain")
        groups = build_mixda(model, head, adapters, cfg)
    elif cfg.method == "mode":
        check_base(experts, fingerprint, "MoDE experts of domain")
        groups = build_mode(model, head, experts, cfg)
    else:
        rank = cfg.lora_rank or (sum(m.rank for m in modules) if modules else 8)
        targets = sorted({layer for m in modules for layer in m.lora_A}) or resolve_target_modules(model, None)[0]
        model, groups = build_peft(model, head, targets, cfg, rank, init=modules[0] if cfg.init_module else None)
    model.to(device)
    if cfg.method == "mode":
        place_experts(model, cfg.mode_device_map)  # experts on their own devices, if a map says so
    trainable = sum(p.numel() for g in groups for p in g["params"])
    if previous is not None and overwrite:
        clear(out)
    run = {"status": "running", "config": cfg.to_dict()}
    atomic.write_json(out / RUN_FILE, run)
    print(f"domix: {cfg.method} on task {task.name!r} ({len(task.labels)} labels; {len(task.splits['train'].texts)} train, "
          f"{len(task.splits['dev'].texts)} dev, {len(task.splits['test'].texts)} test); trainable {trainable:,} "
          f"of {total_params:,} parameters ({100 * trainable / total_params:.2f}%)")

    rows = {s: encode(task.splits[s], tokenizer, cfg.max_length) for s in ("train", "dev", "test")}
    labels = {s: task.label_ids(s) for s in ("train", "dev", "test")}
    state = _train(model, groups, rows, labels, task, cfg, tokenizer.pad_token_id, device, out / "checkpoint", on_step)

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["best_state"].items():
            params[name].copy_(value)
    test_logits = predict(model, rows["test"], tokenizer.pad_token_id, cfg.batch_size, device)
    test_scores = classification_scores(test_logits.argmax(-1), labels["test"], len(task.labels))
    extras = {}  # what the gated composers add: their pieces, layers and mean gate weights over the test set
    if cfg.method == "mixda":
        extras = mixda_record(model, adapters, cfg, rows["test"], tokenizer.pad_token_id, device)
    elif cfg.method == "mode":
        extras = mode_record(model, experts, cfg, rows["test"], tokenizer.pad_token_id, device)
    # the run's cost is that of training and testing: retention below loads a second copy of the base
    peak_mb, wall_s = peak_memory_mb(device), time.perf_counter() - started
    retained = None
    if cfg.general:
        retained = retention(model, base_name, cfg.general, cfg.max_length, cfg.general_blocks, cfg.batch_size, device)
    record = {
        "method": cfg.method,
        "task": task.name,
        "labels": task.labels,
        "base_model": {"name": base_name, "fingerprint": fingerprint},
        "modules": [{"name": m.name, "path": str(m.path), "rank": m.rank, "base_fingerprint": m.base_fingerprint} for m in modules],
        "init_module": cfg.init_module,
        "head": head,
        "layers": sorted(bridged_layers(model)) if cfg.method in MODULE_METHODS + ("head",) else None,
        "dtype": cfg.dtype,
        "max_length": cfg.max_length,
        "bridge": ({"p_init": cfg.p_init, "p_lr": cfg.p_lr, "p_weight_decay": cfg.p_weight_decay, "trained": cfg.method == "domix"}
                   if cfg.method in ("domix", "domix_fixed") else None),
        "bridge_usage": bridge_usage(model) if cfg.method in MODULE_METHODS else None,
        "loss_curve": downsample_curve(state["losses"], 200),
        "dev_history": state["history"],
        "best_epoch": state["best_epoch"],
        "dev": state["history"][state["best_epoch"] - 1],
        "test": test_scores,
        "majority": majority_scores(labels, len(task.labels)),
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_percent": round(100 * trainable / total_params, 3),
        "steps": state["steps"],
        "train_time_s": round(state["train_seconds"], 2),
        "wall_time_s": round(wall_s, 2),
        "peak_memory_mb": peak_mb,
        "retention": retained,
        "saved_model": cfg.save_model,
    }
    record.update(extras)
    if cfg.save_model:
        save_task_model(model, tokenizer, record, out / "model")
    atomic.write_json(out / RESULT_FILE, record)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    run.update(status="finished", test=test_scores, best_epoch=state["best_epoch"])
    atomic.write_json(out / RUN_FILE, run)
    print(format_record(record))
    return record


def majority_scores(labels: dict[str, torch.Tensor], num_labels: int) -> dict:
    """The scores of always answering the training set's most frequent label: what learning nothing gets."""
    label = int(torch.bincount(labels["train"], minlength=num_labels).argmax())
    return {"label": label, **{split: classification_scores(torch.full_like(labels[split], label), labels[split], num_labels)
                               for split in ("dev", "test")}}


def _train(model, groups, rows, labels, task: Task, cfg: FinetuneConfig, pad_id: int, device, ckpt_dir: Path, on_step) -> dict:
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(groups)
    per_epoch = math.ceil(len(rows["train"]) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    ckpt = ckpt_dir / "state.pt"
    state = checkpoint.restore(ckpt, params, optimizer, scheduler)
    if state is None:
        state = {"steps": 0, "history": [], "best_epoch": 0, "best_score": -1.0, "train_seconds": 0.0, "best_state": None, "losses": []}
    else:
        print(f"domix: resuming from step {state['steps']} ({ckpt})")

    def save_checkpoint() -> None:
        checkpoint.save(ckpt, params, optimizer, scheduler, state)

    model.train()
    bar = tqdm(total=total, initial=state["steps"], desc=task.name, unit="step", dynamic_ncols=True, disable=None, mininterval=1.0)
    while state["steps"] < total:
        step = state["steps"]
        idx = batch_rows(len(rows["train"]), cfg.batch_size, cfg.seed, step).tolist()
        batch = pad_batch([rows["train"][i] for i in idx], pad_id)
        batch["labels"] = labels["train"][idx]
        torch.manual_seed(step_seed(cfg.seed, step))  # dropout
        t0 = time.perf_counter()
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        if not torch.isfinite(loss):
            raise DomixError(f"non-finite loss at step {step + 1}; training stopped and the last checkpoint is kept in "
                             f"{ckpt_dir}. Lower --lr (now {cfg.lr:g}) and rerun")
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["steps"] += 1
        state["train_seconds"] += time.perf_counter() - t0
        state["losses"].append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step is not None:
            on_step(state["steps"], loss.item(), model)
        if state["steps"] % per_epoch == 0:  # end of an epoch: dev scores, keep the best
            logits = predict(model, rows["dev"], pad_id, cfg.batch_size, device)
            scores = classification_scores(logits.argmax(-1), labels["dev"], len(task.labels))
            state["history"].append(scores)
            epoch = len(state["history"])
            if scores[cfg.select_metric] > state["best_score"]:
                state.update(best_epoch=epoch, best_score=scores[cfg.select_metric], best_state=trainable_state(model))
            bar.write(f"domix: epoch {epoch}: dev accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}")
            save_checkpoint()
        elif state["steps"] % cfg.checkpoint_every == 0:
            save_checkpoint()
    bar.close()
    return state


def format_record(record: dict) -> str:
    t, d, m = record["test"], record["dev"], record["majority"]["test"]
    return (f"domix: {record['method']} on {record['task']}: best epoch {record['best_epoch']} "
            f"(dev macro-F1 {d['macro_f1']:.4f}); test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, "
            f"micro-F1 {t['micro_f1']:.4f} (majority class: {m['accuracy']:.4f}, {m['macro_f1']:.4f}); trainable {record['trainable_percent']:.2f}%, "
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
