"""MoDE stage 1 (``domix pretrain --method mode``): each domain's experts and a two-way gate per block.

Domains train one after another in one process over the frozen base (nothing is shared between
them, so there is nothing to fuse). Each domain inserts the blocks, adds its experts (copies of the
blocks' source layers) and trains them and the gates with the language-model loss through
``engine.loop.train_domain`` (deterministic steps, atomic checkpoints, exact resume); then it
writes ``OUT/<domain>/`` (``mode_experts.safetensors`` + ``domix_manifest.json``) and takes the
blocks out again. A rerun keeps finished domains and resumes the interrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from domix import atomic
from domix.base_model import BaseModel, find_blocks
from domix.engine.distributed import require_one_process
from domix.errors import DomixError
from domix.methods.mode.config import KIND, BlockPlan, backbone_prior_of, expert_layers_of, plan_blocks
from domix.methods.mode.model import (
    EXPERTS_FILE, add_domain, block_tensors, init_stage1_gates, insert_blocks, place, remove_blocks, set_trainable,
)
from domix.engine.loop import StepHook, TrainResult, evaluate, train_domain
from domix.engine.data import DomainData
from domix.engine.logs import format_summary, log_heldout
from domix.engine.pretrain_run import PretrainRun, domain_manifest, heldout_summary
from domix.store import MANIFEST_NAME
from domix.system import reset_peak_memory, resolve_device

if TYPE_CHECKING:  # the settings' class only names a type here: methods/ sits below the recipes that import it
    from domix.pretraining.config import PretrainConfig


def pretrain_mode(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Train every domain's experts of ``cfg``; returns each domain's manifest."""
    cfg.validate()
    require_one_process(cfg.method, "trains its domains one after another")
    run = PretrainRun.open(cfg, overwrite)
    unknown = sorted(set(cfg.method_options.mode_device_map or {}) - set(run.corpora) - {"backbone", "experts"})
    if unknown:
        raise DomixError(f"--mode-device-map names {unknown}, which are neither 'backbone', 'experts' nor a domain ({list(run.corpora)})")
    pending = run.pending()
    data = run.domain_data(pending)  # all data is checked before the (possibly large) model is loaded
    device = resolve_device((cfg.method_options.mode_device_map or {}).get("backbone", cfg.device))
    base, fingerprint = run.load_base(device)
    base.model.requires_grad_(False)  # the backbone never trains
    _, layers = find_blocks(base.model)
    plans = plan_blocks(len(layers), cfg.method_options.mode_block_size, cfg.method_options.mode_expert_layers, cfg.method_options.mode_blocks)
    record = run.start(fingerprint)
    sizes = ", ".join(f"{p.layers[0]}-{p.layers[-1]}" for p in plans)
    print(f"domix: mode: base {cfg.model} ({run.objective}, fingerprint {fingerprint}); {len(layers)} layers, experts of "
          f"{len(plans[0].source_layers)} layer(s) beside blocks {sizes}")
    for name in run.corpora:
        if name not in data:
            print(f"domix: domain {name!r} already finished, kept")
    for name in pending:
        _train_experts(base, data[name], plans, cfg, fingerprint, run.out, device, on_step)
    manifests = {name: atomic.read_json(run.out / name / MANIFEST_NAME) for name in run.corpora}
    run.finish(record, manifests, heldout_summary(manifests))
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
    try:
        add_domain(model, name)
        init_stage1_gates(model, backbone_prior_of(cfg.method_options.mode_block_size, cfg.method_options.mode_expert_layers, cfg.method_options.mode_backbone_prior))
        place(model, cfg.method_options.mode_device_map)
        set_trainable(model, experts=True)
        result = train_domain(model, name, data.train, base.objective, base.tokenizer, cfg, device, checkpoint, on_step,
                              out / "tensorboard" / name)
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
        remove_blocks(model)
        model.to(device)  # experts placed elsewhere left with their blocks; the backbone stays where it was
    log_heldout(out, name, result.steps, loss_before, loss_after)


def _manifest(base: BaseModel, data: DomainData, plans: list[BlockPlan], cfg: PretrainConfig, fingerprint: str, device,
              result: TrainResult, loss_before: float | None, loss_after: float | None, started: float,
              tensors: dict[str, torch.Tensor]) -> dict:
    expert_params = sum(t.numel() for k, t in tensors.items() if ".expert." in k)
    gate_params = sum(t.numel() for k, t in tensors.items() if ".gate." in k)
    return domain_manifest(
        KIND, data, cfg, base, fingerprint, device, result, loss_before, loss_after, started,
        mode={"block_size": cfg.method_options.mode_block_size, "expert_layers": expert_layers_of(cfg.method_options.mode_block_size, cfg.method_options.mode_expert_layers),
              "backbone_prior": backbone_prior_of(cfg.method_options.mode_block_size, cfg.method_options.mode_expert_layers, cfg.method_options.mode_backbone_prior),
              "blocks": [p.to_dict() for p in plans], "expert_parameters": expert_params, "gate_parameters": gate_params,
              "device_map": cfg.method_options.mode_device_map},
        training={"init_seed": None},  # the experts start as copies of the backbone's layers, the gates at the prior
    )
