"""DoMIX stage 1: one PEFT LoRA module per domain over a frozen base (``domix pretrain --method domix``).

The output folder (the module store) holds ``run.json`` (settings and status), one subfolder per
finished domain (a plain PEFT adapter plus ``domix_manifest.json``), and ``checkpoints/`` while a
domain is in progress. Several domains train fused in one pass over the base (``fused.py``), or
one after another, or spread over processes (``engine.distributed``); each domain's initial
weights come from its own seed (``engine.loop.domain_seed``), so the module is the same either way.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from domix import atomic
from domix.base_model import BaseModel, head_module_name, model_reference, resolve_target_modules
from domix.engine.data import DomainData
from domix.engine.distributed import DataParallel, process_group
from domix.engine.logs import format_summary, log_heldout
from domix.engine.loop import StepHook, TrainResult, domain_seed, evaluate, train_domain
from domix.engine.pretrain_run import PretrainRun, domain_manifest, heldout_summary
from domix.methods.bridge.fused import train_fused
from domix.store import MANIFEST_NAME
from domix.system import reset_peak_memory, resolve_device

if TYPE_CHECKING:  # the settings' class only names a type here: methods/ sits below the recipes that import it
    from domix.pretraining.config import PretrainConfig


def pretrain_modules(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Train one LoRA module per domain of ``cfg``; returns each domain's manifest."""
    run = PretrainRun.open(cfg, overwrite)
    out = run.out
    data = run.domain_data(run.pending())  # all data is checked before the (possibly large) model is loaded
    ranks = process_group()
    device = ranks.device(resolve_device(cfg.device))
    base, fingerprint = run.load_base(device)
    target_modules, matched = resolve_target_modules(base.model, cfg.target_modules)
    ranks.barrier()  # every process has checked the folder and the inputs
    record = run.start(fingerprint, write=ranks.is_main)
    if ranks.is_main:
        print(f"domix: base {cfg.model} ({run.objective}, fingerprint {fingerprint}); LoRA r={cfg.lora_rank} on {len(matched)} layers")
        for name in run.corpora:
            if name not in data:
                print(f"domix: domain {name!r} already finished, kept")
    ranks.barrier()

    names, dp = ranks.share(list(data))
    mine = {name: data[name] for name in names}
    if ranks.world > 1:
        shared = f", data-parallel with {dp.size - 1} other process(es)" if dp else ""
        print(f"domix: process {ranks.rank} of {ranks.world} trains {list(mine) or 'nothing'}{shared}")
    if cfg.fused and len(mine) > 1 and not cfg.train_head:
        _pretrain_fused(base, mine, cfg, target_modules, fingerprint, out, device, on_step)
    else:
        for name in mine:
            _pretrain_domain(base, mine[name], cfg, target_modules, fingerprint, out, device, on_step, dp)
    ranks.barrier()
    manifests = {name: atomic.read_json(out / name / MANIFEST_NAME) for name in run.corpora}
    if ranks.is_main:
        run.finish(record, manifests, heldout_summary(manifests))
        print(format_summary(manifests))
    return manifests


def lora_config(base: BaseModel, cfg: PretrainConfig, target_modules):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_modules,
        modules_to_save=[head_module_name(base.model)] if cfg.train_head else None,
        bias="none",
    )


def _manifest(base: BaseModel, data: DomainData, cfg: PretrainConfig, target_modules, fingerprint: str, device,
              result: TrainResult, loss_before: float | None, loss_after: float | None, started: float, fused_with: list[str]) -> dict:
    return domain_manifest(
        "domix-domain-module", data, cfg, base, fingerprint, device, result, loss_before, loss_after, started,
        lora={"r": cfg.lora_rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "target_modules": target_modules, "train_head": cfg.train_head},
        training={"fused_with": fused_with},
    )


def _pretrain_domain(
    base: BaseModel, data: DomainData, cfg: PretrainConfig, target_modules, fingerprint: str,
    out: Path, device: torch.device, on_step: StepHook | None, dp: DataParallel | None = None,
) -> None:
    from peft import get_peft_model

    started = time.perf_counter()
    reset_peak_memory(device)
    corpus, train, heldout = data.corpus, data.train, data.heldout
    torch.manual_seed(domain_seed(cfg.seed, corpus.name))  # LoRA A's Kaiming init: the domain's own
    model = get_peft_model(base.model, lora_config(base, cfg, target_modules))
    checkpoint = out / "checkpoints" / f"{corpus.name}.pt"
    try:
        loss_before = evaluate(model, heldout, base.objective, base.tokenizer, cfg, device) if len(heldout) else None
        print(f"domix: domain {corpus.name!r}: {len(train)} training and {len(heldout)} held-out sequences of {cfg.seq_len} tokens")
        result = train_domain(model, corpus.name, train, base.objective, base.tokenizer, cfg, device, checkpoint, on_step,
                              out / "tensorboard" / corpus.name, dp)
        loss_after = evaluate(model, heldout, base.objective, base.tokenizer, cfg, device) if len(heldout) else None
        manifest = _manifest(base, data, cfg, target_modules, fingerprint, device, result, loss_before, loss_after, started, [])
        if dp is not None:
            manifest["training"]["data_parallel_processes"] = dp.size

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp)
            atomic.write_json(tmp / MANIFEST_NAME, manifest)

        if dp is None or dp.is_leader:
            atomic.replace_dir(out / corpus.name, fill)
            checkpoint.unlink(missing_ok=True)
    finally:
        base.model = model.unload()  # the base without LoRA layers, weights untouched
    log_heldout(out, corpus.name, result.steps, loss_before, loss_after)


def _initial_pairs(base: BaseModel, cfg: PretrainConfig, target_modules, domain: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The LoRA pairs PEFT initialises for ``domain``: fused training starts where a separate run would."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(domain_seed(cfg.seed, domain))
    model = get_peft_model(base.model, lora_config(base, cfg, target_modules))
    pairs = {name.removeprefix("base_model.model."): (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
             for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    base.model = model.unload()
    return pairs


def _write_module(folder: Path, lora_config, base: BaseModel, base_name: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  manifest: dict) -> None:
    """Write a domain module as a PEFT adapter folder (the format PeftModel.save_pretrained writes)."""
    from safetensors.torch import save_file

    lora_config.base_model_name_or_path = model_reference(base_name)
    lora_config.inference_mode = True
    tensors = {}
    for layer, (A, B) in pairs.items():
        tensors[f"base_model.model.{layer}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{layer}.lora_B.weight"] = B.contiguous()

    def fill(tmp: Path) -> None:
        # as PeftModel.save_pretrained records it for a model without a task type
        auto_mapping = {"base_model_class": type(base.model).__name__, "parent_library": type(base.model).__module__}
        lora_config.save_pretrained(tmp, auto_mapping_dict=auto_mapping)
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        atomic.write_json(tmp / MANIFEST_NAME, manifest)

    atomic.replace_dir(folder, fill)


@contextmanager
def stage1_model(model: torch.nn.Module, folder: str | Path) -> Iterator[torch.nn.Module]:
    """``model`` (the base language model) with one domain's module as trained, loaded by PEFT alone
    (``PeftModel.from_pretrained``), for scoring text; unloaded again on exit (the base's weights untouched)."""
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, str(folder))
    try:
        yield adapted
    finally:
        adapted.unload()


def _pretrain_fused(
    base: BaseModel, data: dict[str, DomainData], cfg: PretrainConfig, target_modules, fingerprint: str,
    out: Path, device: torch.device, on_step: StepHook | None,
) -> None:
    started = time.perf_counter()
    reset_peak_memory(device)
    names = list(data)
    initial = {n: _initial_pairs(base, cfg, target_modules, n) for n in names}
    before = {}
    for n in names:
        heldout = data[n].heldout
        before[n] = evaluate(base.model, heldout, base.objective, base.tokenizer, cfg, device) if len(heldout) else None
        print(f"domix: domain {n!r}: {len(data[n].train)} training and {len(heldout)} held-out sequences of {cfg.seq_len} tokens")
    print(f"domix: training {len(names)} domains fused in one pass over the base")
    checkpoint = out / "checkpoints" / f"fused-{'+'.join(names)}.pt"

    def done(name: str, pairs, result: TrainResult, after: float | None) -> None:
        manifest = _manifest(base, data[name], cfg, target_modules, fingerprint, device, result, before[name], after, started, names)
        _write_module(out / name, lora_config(base, cfg, target_modules), base, cfg.model, pairs, manifest)
        log_heldout(out, name, result.steps, before[name], after)

    train_fused(base.model, initial, {n: data[n].train for n in names}, {n: data[n].heldout for n in names},
                base.objective, base.tokenizer, cfg, device, checkpoint, done, on_step, out / "tensorboard")
    checkpoint.unlink(missing_ok=True)
