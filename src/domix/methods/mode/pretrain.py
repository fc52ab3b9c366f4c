"""MoDE stage 1 (``domix pretrain --method mode``): each domain's experts and a two-way gate per block.

Domains train one after another in one process over the frozen base (nothing is shared between
them, so there is nothing to fuse). Each domain inserts the blocks, adds its experts (copies of the
blocks' source layers) and trains them and the gates with the language-model loss through
``pretrain.loop.train_domain`` (deterministic steps, atomic checkpoints, exact resume); then it
writes ``OUT/<domain>/`` (``mode_experts.safetensors`` + ``domix_manifest.json``) and takes the
blocks out again. A rerun keeps finished domains and resumes the interrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from domix import atomic
from domix.base_model import BaseModel, find_blocks, load_base_model, load_tokenizer, weights_fingerprint
from domix.corpus import read_corpus
from domix.engine.distributed import require_one_process
from domix.errors import DomixError
from domix.metrics import downsample_curve
from domix.methods.mode.config import BlockPlan, plan_blocks
from domix.methods.mode.model import (
    EXPERTS_FILE, KIND, add_domain, block_tensors, init_stage1_gates, insert_blocks, place, remove_blocks, set_trainable,
)
from domix.pretrain.config import PretrainConfig
from domix.engine.loop import StepHook, TrainResult, evaluate, train_domain
from domix.engine.data import DomainData
from domix.engine.logs import format_summary, log_heldout, tensorboard
from domix.engine.runfolder import RUN_FILE, check_corpora_unchanged, check_out, clear
from domix.store import MANIFEST_NAME, versions
from domix.system import DTYPES, peak_memory_mb, reset_peak_memory, resolve_device


def pretrain_mode(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Train every domain's experts of ``cfg``; returns each domain's manifest."""
    cfg.validate()
    require_one_process(cfg.method, "trains its domains one after another")
    out = Path(cfg.out)
    previous = check_out(out, cfg.to_dict(), PretrainConfig.RESUME_FREE, overwrite)
    resuming = previous is not None and not overwrite
    corpora = {name: read_corpus(name, path) for name, path in cfg.domains.items()}
    fingerprints = {name: c.fingerprint for name, c in corpora.items()}
    if resuming:
        check_corpora_unchanged(previous.get("corpora", {}), fingerprints)
    unknown = sorted(set(cfg.mode_device_map or {}) - set(corpora) - {"backbone", "experts"})
    if unknown:
        raise DomixError(f"--mode-device-map names {unknown}, which are neither 'backbone', 'experts' nor a domain ({list(corpora)})")
    tokenizer, objective = load_tokenizer(cfg.model, cfg.objective)
    pending = [n for n in corpora if not (resuming and (out / n / MANIFEST_NAME).exists())]
    # all data is checked before the (possibly large) model is loaded
    data = {name: DomainData.build(corpora[name], tokenizer, objective, cfg) for name in pending}
    device = resolve_device((cfg.mode_device_map or {}).get("backbone", cfg.device))
    base = load_base_model(cfg.model, objective, DTYPES[cfg.dtype], tokenizer)
    base.model.to(device)
    base.model.requires_grad_(False)  # the backbone never trains
    fingerprint = weights_fingerprint(base.model)
    if resuming and previous.get("base_fingerprint") != fingerprint:
        raise DomixError(f"the weights of base model {cfg.model} changed since this unfinished run began; "
                         "use the same model, or pass --overwrite to start over")
    _, layers = find_blocks(base.model)
    plans = plan_blocks(len(layers), cfg.mode_block_size, cfg.mode_expert_layers, cfg.mode_blocks)
    run = {"status": "running", "method": cfg.method, "config": cfg.to_dict(), "base_fingerprint": fingerprint,
           "corpora": fingerprints, "domains": list(cfg.domains)}
    if previous is not None and overwrite:
        clear(out)
    atomic.write_json(out / RUN_FILE, run)
    sizes = ", ".join(f"{p.layers[0]}-{p.layers[-1]}" for p in plans)
    print(f"domix: mode: base {cfg.model} ({objective}, fingerprint {fingerprint}); {len(layers)} layers, experts of "
          f"{len(plans[0].source_layers)} layer(s) beside blocks {sizes}")
    for name in corpora:
        if name not in data:
            print(f"domix: domain {name!r} already finished, kept")
    for name in pending:
        _train_experts(base, data[name], plans, cfg, fingerprint, out, device, on_step)
    manifests = {name: atomic.read_json(out / name / MANIFEST_NAME) for name in corpora}
    run["status"] = "finished"
    run["summary"] = {n: {k: m["heldout"][k] for k in ("loss_before", "loss_after")} for n, m in manifests.items()}
    atomic.write_json(out / RUN_FILE, run)
    print(format_summary(manifests))
    return manifests


def _train_experts(base: BaseModel, data: DomainData, plans: list[BlockPlan], cfg: PretrainConfig, fingerprint: str,
                   out: Path, device: torch.device, on_step: StepHook | None) -> None:
    started = time.perf_counter()
    reset_peak_memory(device)
    name, model = data.corpus.name, base.model
    heldout = data.heldout
    # before: the base alone (an expert with fewer layers than its block does not start equal to it)
    loss_before = evaluate(model, heldout, base.objective, base.tokenizer, cfg, device) if len(heldout) else None
    print(f"domix: domain {name!r}: {len(data.train)} training and {len(heldout)} held-out sequences of {cfg.seq_len} tokens")
    checkpoint = out / "checkpoints" / f"{name}.pt"
    insert_blocks(model, plans)
    writer = tensorboard(out / "tensorboard" / name)
    try:
        add_domain(model, name)
        init_stage1_gates(model, cfg.mode_backbone_prior)
        place(model, cfg.mode_device_map)
        set_trainable(model, experts=True)
        result = train_domain(model, name, data.train, base.objective, base.tokenizer, cfg, device, checkpoint, on_step, writer)
        loss_after = evaluate(model, heldout, base.objective, base.tokenizer, cfg, device) if len(heldout) else None
        tensors = block_tensors(model, stage1_key=True)
        manifest = _manifest(base, data, plans, cfg, fingerprint, device, result, loss_before, loss_after, started, tensors)

        def fill(tmp: Path) -> None:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp / EXPERTS_FILE), metadata={"format": "pt"})
            atomic.write_json(tmp / MANIFEST_NAME, manifest)

        atomic.replace_dir(out / name, fill)
        checkpoint.unlink(missing_ok=True)
    finally:
        if writer is not None:
            writer.close()
        remove_blocks(model)
        model.to(device)  # experts placed elsewhere left with their blocks; the backbone stays where it was
    log_heldout(out, name, result.steps, loss_before, loss_after)


def _manifest(base: BaseModel, data: DomainData, plans: list[BlockPlan], cfg: PretrainConfig, fingerprint: str, device,
              result: TrainResult, loss_before: float | None, loss_after: float | None, started: float,
              tensors: dict[str, torch.Tensor]) -> dict:
    corpus, heldout = data.corpus, data.heldout
    expert_params = sum(t.numel() for k, t in tensors.items() if ".expert." in k)
    gate_params = sum(t.numel() for k, t in tensors.items() if ".gate." in k)
    return {
        "name": corpus.name,
        "kind": KIND,
        "corpus": {"path": corpus.path, "fingerprint": corpus.fingerprint, "passages": len(corpus.passages), "tokens": data.tokens},
        "base_model": {"name": cfg.model, "fingerprint": fingerprint, "model_type": base.model.config.model_type},
        "objective": base.objective,
        "mode": {"block_size": cfg.mode_block_size, "expert_layers": cfg.mode_expert_layers, "backbone_prior": cfg.mode_backbone_prior,
                 "blocks": [p.to_dict() for p in plans], "expert_parameters": expert_params, "gate_parameters": gate_params,
                 "device_map": cfg.mode_device_map},
        "training": {
            "steps": result.steps, "tokens_seen": result.tokens_seen, "batch_size": cfg.batch_size,
            "seq_len": cfg.seq_len, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "warmup_ratio": cfg.warmup_ratio,
            "seed": cfg.seed, "dtype": cfg.dtype, "device": str(device),
            "loss_curve": downsample_curve(result.losses, 200),
        },
        "heldout": {"sequences": len(heldout), "tokens": int(heldout.numel()), "loss_before": loss_before, "loss_after": loss_after},
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_time_s": round(result.train_seconds, 2),
        "peak_memory_mb": peak_memory_mb(device),
        "versions": versions(),
    }
