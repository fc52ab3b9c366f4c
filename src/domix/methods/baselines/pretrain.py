"""Domain-adaptive pre-training baselines (docs/methods.md §4): one model for all the domains.

- ``ncl_lora``: naive continual learning with one LoRA, trained on the domains in their given
  order; saved as ``OUT/ncl/``, a plain PEFT adapter with ``domix_manifest.json`` (so the store
  loads it as a module).
- ``joint_lora``: one LoRA trained on every domain's training blocks shuffled together, for the
  sum of the domains' step counts; saved as ``OUT/joint/`` in the same way.
- ``ncl_full``: the whole model (LM head included) trained on the domains in order; saved as a
  transformers model folder ``OUT/ncl-full/`` with ``domix_model.json``.

Each domain of a sequence is a phase: ``engine.loop.train_domain`` with a fresh AdamW and linear schedule
over the steps a domix module of that domain gets, starting from the previous phase's weights (the
joint run is one phase). After each phase the trainable weights and the phase's record go to
``checkpoints/<folder>-phases.pt``; a rerun skips the finished phases and resumes the interrupted
one from its step checkpoint, so it ends with the weights an uninterrupted run makes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from domix import atomic
from domix.engine import checkpoint
from domix.base_model import BaseModel, model_reference, resolve_target_modules, weights_fingerprint
from domix.engine.distributed import require_one_process
from domix.methods.baselines.config import OUTPUTS, WHOLE_MODELS
from domix.metrics import downsample_curve
from domix.engine.loop import (
    StepHook,
    TrainResult,
    trainable,
    evaluate,
    total_steps,
    train_domain,
)
from domix.engine.data import DomainData
from domix.engine.pretrain_run import PretrainRun
from domix.methods.bridge.pretrain import lora_config
from domix.store import MANIFEST_NAME, versions
from domix.system import peak_memory_mb, reset_peak_memory, resolve_device
from domix.tokens import TokenBlocks

if TYPE_CHECKING:  # the settings' class only names a type here: methods/ sits below the recipes that import it
    from domix.pretraining.config import PretrainConfig

KINDS = {"ncl_lora": "domix-sequential-module", "joint_lora": "domix-joint-module", "ncl_full": "domix-ncl-full-model"}
# A full model's manifest has its own name, so load_store never takes the folder for a LoRA module.
MODEL_MANIFEST_NAME = "domix_model.json"


@dataclass
class Phase:
    name: str  # the domain, or "joint"
    train: torch.Tensor  # (sequences, seq_len) token ids
    cfg: PretrainConfig  # the phase's settings (joint: steps = the domains' sum)


@dataclass
class Baseline:
    """What every baseline trains with: settings, base, data, where it writes."""

    cfg: PretrainConfig
    out: Path
    base: BaseModel
    data: dict[str, DomainData]  # in the order the domains were given
    fingerprint: str
    target_modules: list[str] | str | None
    device: torch.device

    @property
    def folder(self) -> Path:
        return self.out / OUTPUTS[self.cfg.method]

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"


def manifest_name(method: str) -> str:
    return MODEL_MANIFEST_NAME if method in WHOLE_MODELS else MANIFEST_NAME


def pretrain_baseline(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Train the baseline ``cfg.method`` over all of ``cfg.domains``; returns {folder name: manifest}."""
    cfg.validate()
    require_one_process(cfg.method, "trains one model over all the domains")
    run = PretrainRun.open(cfg, overwrite)
    folder_name = OUTPUTS[cfg.method]
    data = run.domain_data(list(run.corpora))  # all data is checked before the (possibly large) model is loaded
    saved = run.out / folder_name / manifest_name(cfg.method)
    if run.resuming and saved.is_file():  # trained and saved, but the run did not record its end
        record, manifest = run.previous, atomic.read_json(saved)
    else:
        record, manifest = _train_baseline(run, data, on_step)
    run.finish(record, {folder_name: manifest}, {n: {k: h[k] for k in ("loss_before", "loss_after")}
                                                 for n, h in manifest["heldout"]["domains"].items()})
    print(format_baseline_summary(manifest))
    return {folder_name: manifest}


def _train_baseline(run: PretrainRun, data: dict[str, DomainData], on_step: StepHook | None) -> tuple[dict, dict]:
    """Load the base, record the run as running, train; returns the run record and the manifest."""
    cfg = run.cfg
    device = resolve_device(cfg.device)
    base, fingerprint = run.load_base(device)
    lora = cfg.method not in WHOLE_MODELS
    target_modules, matched = resolve_target_modules(base.model, cfg.target_modules) if lora else (None, [])
    setup = Baseline(cfg, run.out, base, data, fingerprint, target_modules, device)
    record = run.start(fingerprint, output=setup.folder.name)
    trains = f"LoRA r={cfg.lora_rank} on {len(matched)} layers" if matched else f"the whole model ({_count(base.model):,} parameters)"
    print(f"domix: {cfg.method}: base {cfg.model} ({run.objective}, fingerprint {fingerprint}); {trains}; domains {list(data)}")
    reset_peak_memory(device)
    return record, TRAINERS[cfg.method](setup, on_step)


def _train_ncl_lora(s: Baseline, on_step: StepHook | None) -> dict:
    phases = [Phase(name, d.train, s.cfg) for name, d in s.data.items()]
    return _train_lora(s, phases, on_step)


def _train_joint_lora(s: Baseline, on_step: StepHook | None) -> dict:
    steps = {name: total_steps(s.cfg, len(d.train)) for name, d in s.data.items()}
    # as many steps (so tokens) as the domix modules together, over the union shuffled each epoch
    union = TokenBlocks.concat([d.train for d in s.data.values()])
    manifest = _train_lora(s, [Phase("joint", union, dataclasses.replace(s.cfg, steps=sum(steps.values())))], on_step)
    manifest["training"]["steps_per_domain"] = steps
    return manifest


def _train_lora(s: Baseline, phases: list[Phase], on_step: StepHook | None) -> dict:
    from peft import get_peft_model

    torch.manual_seed(s.cfg.seed)  # LoRA A's Kaiming init, as a domix module's
    model = get_peft_model(s.base.model, lora_config(s.base, s.cfg, s.target_modules))
    try:
        manifest = _train_phases(s, model, phases, on_step)
        cfg = s.cfg
        manifest["lora"] = {"r": cfg.lora_rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "target_modules": s.target_modules,
                            "train_head": cfg.train_head}

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp)
            atomic.write_json(tmp / MANIFEST_NAME, manifest)

        atomic.replace_dir(s.folder, fill)
    finally:
        s.base.model = model.unload()  # the base without LoRA layers, weights untouched
    _remove_phase_state(s)
    return manifest


def _train_ncl_full(s: Baseline, on_step: StepHook | None) -> dict:
    model = s.base.model
    for p in model.parameters():
        p.requires_grad_(True)  # everything trains, the LM head included
    manifest = _train_phases(s, model, [Phase(name, d.train, s.cfg) for name, d in s.data.items()], on_step)
    manifest["model"] = {"parameters": _count(model), "fingerprint": weights_fingerprint(model)}
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # a GGUF base was de-quantised on load; the saved weights are plain

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        s.base.tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / MODEL_MANIFEST_NAME, manifest)

    atomic.replace_dir(s.folder, fill)
    _remove_phase_state(s)
    return manifest


TRAINERS = {"ncl_lora": _train_ncl_lora, "joint_lora": _train_joint_lora, "ncl_full": _train_ncl_full}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _heldout_losses(s: Baseline, model: nn.Module) -> dict[str, float | None]:
    """Every domain's held-out loss (fixed masks, so before and after compare)."""
    base = s.base
    return {name: evaluate(model, d.heldout, base.objective, base.tokenizer, s.cfg, s.device) if len(d.heldout) else None
            for name, d in s.data.items()}


def _train_phases(s: Baseline, model: nn.Module, phases: list[Phase], on_step: StepHook | None) -> dict:
    """Train ``model`` through ``phases`` (resuming where a previous session stopped); the manifest."""
    started = time.perf_counter()
    before = _heldout_losses(s, model)  # deterministic, so a resumed run measures the same
    params = trainable(model)
    records, wall_before = _restore_phase_state(s, params)
    for i, phase in enumerate(phases):
        step_file = s.checkpoints / f"{s.folder.name}-{i + 1}-{phase.name}.pt"
        if i < len(records):
            print(f"domix: phase {i + 1} ({phase.name!r}) already finished, kept")
            step_file.unlink(missing_ok=True)  # left behind if the last session stopped right after the phase
            continue
        print(f"domix: phase {i + 1} of {len(phases)}: {phase.name!r}, {len(phase.train)} training sequences of {s.cfg.seq_len} tokens")
        result = _train_phase(s, model, phase, step_file, on_step)
        records.append(_phase_record(phase, result, _heldout_losses(s, model)))
        checkpoint.write(_phase_state_file(s), {
            "phases": records, "params": {n: p.detach().cpu() for n, p in params.items()},
            "wall_time_s": wall_before + time.perf_counter() - started,
        })
        step_file.unlink(missing_ok=True)  # the phase state now holds this phase's end
    return _manifest(s, records, before, wall_before + time.perf_counter() - started)


def _train_phase(s: Baseline, model: nn.Module, phase: Phase, checkpoint: Path, on_step: StepHook | None) -> TrainResult:
    return train_domain(model, phase.name, phase.train, s.base.objective, s.base.tokenizer, phase.cfg, s.device,
                        checkpoint, on_step, s.out / "tensorboard" / s.folder.name / phase.name)


def _phase_record(phase: Phase, result: TrainResult, heldout_after: dict[str, float | None]) -> dict:
    return {
        "domain": phase.name, "steps": result.steps, "tokens_seen": result.tokens_seen,
        "train_time_s": round(result.train_seconds, 2), "loss_curve": downsample_curve(result.losses, 200),
        "heldout_after": heldout_after,  # every domain's, so forgetting shows phase by phase
    }


def _phase_state_file(s: Baseline) -> Path:
    return s.checkpoints / f"{s.folder.name}-phases.pt"


def _restore_phase_state(s: Baseline, params: dict[str, nn.Parameter]) -> tuple[list[dict], float]:
    """The finished phases' records and wall time; loads their end weights into ``params``."""
    state_file = _phase_state_file(s)
    if not state_file.exists():
        return [], 0.0
    state = checkpoint.read(state_file)
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    print(f"domix: resuming after {len(state['phases'])} finished phase(s) ({state_file})")
    return state["phases"], state["wall_time_s"]


def _remove_phase_state(s: Baseline) -> None:
    _phase_state_file(s).unlink(missing_ok=True)
    try:
        s.checkpoints.rmdir()
    except OSError:  # absent, or holding other files
        pass


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _manifest(s: Baseline, records: list[dict], before: dict, wall_seconds: float) -> dict:
    cfg, base = s.cfg, s.base
    after = records[-1]["heldout_after"]
    return {
        "name": s.folder.name,
        "kind": KINDS[cfg.method],
        "method": cfg.method,
        "order": list(s.data),
        "corpora": {n: {"path": d.corpus.path, "fingerprint": d.corpus.fingerprint, "passages": d.corpus.passages, "tokens": d.tokens}
                    for n, d in s.data.items()},
        "base_model": {"name": model_reference(cfg.model), "fingerprint": s.fingerprint, "model_type": base.model.config.model_type},
        "objective": base.objective,
        "training": {
            "steps": sum(r["steps"] for r in records), "tokens_seen": sum(r["tokens_seen"] for r in records),
            "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "warmup_ratio": cfg.warmup_ratio, "seed": cfg.seed, "dtype": cfg.dtype, "device": str(s.device),
        },
        "phases": records,
        "heldout": {
            # the mean over domains, for readers that expect one number as a domain module's manifest has it
            "loss_before": _mean(before.values()), "loss_after": _mean(after.values()),
            "domains": {n: {"sequences": len(d.heldout), "tokens": int(d.heldout.numel()), "loss_before": before[n], "loss_after": after[n]}
                        for n, d in s.data.items()},
        },
        "wall_time_s": round(wall_seconds, 2),
        "train_time_s": round(sum(r["train_time_s"] for r in records), 2),
        "peak_memory_mb": peak_memory_mb(s.device),
        "versions": versions(),
    }


def _loss(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def format_baseline_summary(manifest: dict) -> str:
    """Held-out loss per domain before, after each earlier phase (forgetting), and at the end."""
    phases = manifest["phases"]
    between = phases[:-1]  # the last phase's losses are the final ones
    by_domain = {p["domain"]: p for p in phases}
    rows = [("domain", "steps", "held-out before", *(f"after {p['domain']}" for p in between), "held-out after", "change")]
    for name, h in manifest["heldout"]["domains"].items():
        steps = by_domain[name]["steps"] if name in by_domain else manifest["training"].get("steps_per_domain", {}).get(name, "-")
        change = f"{h['loss_after'] - h['loss_before']:+.3f}" if h["loss_before"] is not None else "-"
        rows.append((name, str(steps), _loss(h["loss_before"]), *(_loss(p["heldout_after"][name]) for p in between),
                     _loss(h["loss_after"]), change))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = manifest["training"]
    lines.append(f"{manifest['name']} ({manifest['method']}): {t['steps']} steps, {t['tokens_seen']:,} tokens, "
                 f"{manifest['wall_time_s']:.0f} s, peak {manifest['peak_memory_mb']:.0f} MB")
    return "\n".join(lines)
