"""MixDA stage 1: one set of domain adapters per domain on the frozen base (``domix pretrain --method mixda``).

Each adapted FFN output is g_1 DA_k(h) + g_2 W2 h, with domain k's two-way gate g (methods/mixda/layer.py),
the layer stage 2 mixes. Domain k's loss at each step is LM_WEIGHT (0.5) x the language-model loss (masked
or causal, as the base) of its adapters and gates on a batch of its corpus, plus the retention term: the
MSE between that output and the plain one W2 h at each adapted block (mean over blocks), on a batch of
general text fed through the backbone. The published code compares a tensor with itself there.

Several domains train fused, as DoMIX's modules do (methods/bridge/fused.py): the batch stacks every
unfinished domain's rows, each domain's adapters see only its rows, and each domain keeps its own
loss, optimizer, schedule, clipping, data order and masks, so its adapters equal a separate run's.
Data order, masks and dropout come from per-step seeds (engine/loop.py), checkpoints are atomic, and
a rerun resumes to the adapters an uninterrupted run makes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from domix import atomic
from domix.base_model import BaseModel
from domix.batches import lm_batch
from domix.corpus import read_corpus, tokenize_blocks
from domix.engine.distributed import require_one_process
from domix.errors import DomixError
from domix.lm_loss import lm_losses
from domix.metrics import downsample_curve
from domix.methods.mixda.config import KIND, LM_WEIGHT
from domix.methods.mixda.layer import Segments, adapter_dtype
from domix.methods.mixda.model import Site, adapter_sites, adapter_tensors, install_domain_adapters, new_adapters, uninstall, widths, write_domain
from domix.engine.fused import FusedStep, train_domains
from domix.engine.loop import (
    StepHook, TrainResult, batch_rows, domain_seed, evaluate, step_seed, total_steps,
)
from domix.engine.data import DomainData
from domix.sources import looks_like_dataset_name
from domix.tokens import TokenBlocks
from domix.engine.logs import format_summary, log_heldout
from domix.engine.pretrain_run import PretrainRun, domain_manifest, heldout_summary
from domix.store import MANIFEST_NAME
from domix.system import reset_peak_memory, resolve_device

if TYPE_CHECKING:  # the settings' class only names a type here: methods/ sits below the recipes that import it
    from domix.pretraining.config import PretrainConfig

GENERAL = "general"  # the general corpus's name in messages and records


@dataclass
class MixDAResult(TrainResult):
    lm_losses: list[float] = field(default_factory=list)  # the language-model term, one per step
    retention_losses: list[float] = field(default_factory=list)  # the retention MSE, one per step
    general_tokens_seen: int = 0


@dataclass
class Setup:
    """What every group of domains trains with."""

    cfg: PretrainConfig
    out: Path
    base: BaseModel
    sites: list[Site]
    general: TokenBlocks  # (sequences, seq_len) token ids of the general corpus
    general_info: dict
    fingerprint: str
    device: torch.device


def pretrain_mixda(cfg: PretrainConfig, overwrite: bool = False, on_step: StepHook | None = None) -> dict[str, dict]:
    """Train MixDA domain adapters for every domain of ``cfg``; returns each domain's manifest."""
    cfg.validate()
    require_one_process(cfg.method, "trains its domains fused")
    if not Path(cfg.general).exists() and not looks_like_dataset_name(cfg.general):
        raise DomixError(f"general-domain corpus {cfg.general} (--general) does not exist; give a text file or folder of general text")
    general = read_corpus(GENERAL, cfg.general, cfg.text_column)
    run = PretrainRun.open(cfg, overwrite, extra={"general_corpus": general})
    pending = run.pending()
    data = run.domain_data(pending)  # all data is checked before the (possibly large) model is loaded
    general_blocks = tokenize_blocks(general, run.tokenizer, cfg.seq_len, append_eos=run.objective == "clm")
    device = resolve_device(cfg.device)
    base, fingerprint = run.load_base(device)
    sites = adapter_sites(base.model, cfg.method_options.mixda_layers)
    base.model.requires_grad_(False)
    record = run.start(fingerprint, general_corpus=general.fingerprint, layers=[s.index for s in sites])
    print(f"domix: mixda: base {cfg.model} ({run.objective}, fingerprint {fingerprint}); domain adapters "
          f"(bottleneck {widths(sites[0], cfg.method_options.mixda_reduction)['adapter']}) beside {', '.join(s.name for s in sites)}")
    for name in run.corpora:
        if name not in data:
            print(f"domix: domain {name!r} already finished, kept")
    general_info = {"path": general.path, "fingerprint": general.fingerprint, "passages": general.passages,
                    "tokens": int(general_blocks.numel())}
    setup = Setup(cfg, run.out, base, sites, general_blocks, general_info, fingerprint, device)
    groups = ([pending] if cfg.fused else [[n] for n in pending]) if pending else []
    for names in groups:
        _train_group(setup, {n: data[n] for n in names}, on_step)
    manifests = {name: atomic.read_json(run.out / name / MANIFEST_NAME) for name in run.corpora}
    run.finish(record, manifests, heldout_summary(manifests))
    print(format_summary(manifests))
    return manifests


def _train_group(s: Setup, data: dict[str, DomainData], on_step: StepHook | None) -> None:
    """Train the domains of ``data`` together (one domain: a separate run), writing each as it finishes."""
    cfg, base, device = s.cfg, s.base, s.device
    model, objective, tokenizer = base.model, base.objective, base.tokenizer
    started = time.perf_counter()
    reset_peak_memory(device)
    names = list(data)
    before = {}
    for n in names:
        heldout = data[n].heldout
        before[n] = evaluate(model, heldout, objective, tokenizer, cfg, device) if len(heldout) else None
        print(f"domix: domain {n!r}: {len(data[n].train)} training and {len(heldout)} held-out sequences of {cfg.seq_len} tokens")
    if len(names) > 1:
        print(f"domix: training {len(names)} domains fused in one pass over the base")
    dtype = adapter_dtype(next(model.parameters()).dtype)
    adapters = [new_adapters(s.sites, cfg.method_options.mixda_reduction, domain_seed(cfg.seed, n), dtype) for n in names]  # (adapters, gates)
    segments, layers = install_domain_adapters(model, s.sites, adapters, causal=objective == "clm")
    checkpoint = s.out / "checkpoints" / ("mixda-fused.pt" if cfg.fused else f"mixda-{names[0]}.pt")

    def step_losses(active: list[int]) -> FusedStep:
        lm, retention, spans, general_rows = _step_losses(s, segments, data, names, active, results)

        def record(k: int, res: MixDAResult) -> None:
            i = active.index(k)
            res.general_tokens_seen += general_rows[i] * cfg.seq_len
            res.lm_losses.append(lm[i].item())
            res.retention_losses.append(retention[i].item())

        return FusedStep([LM_WEIGHT * a + b for a, b in zip(lm, retention)], spans, record)

    def done(k: int, result: MixDAResult) -> None:
        n = names[k]
        segments.only(k)
        after = evaluate(model, data[n].heldout, objective, tokenizer, cfg, device) if len(data[n].heldout) else None
        write_domain(s.out / n, adapter_tensors(s.sites, *adapters[k]), _manifest(s, data[n], result, before[n], after, started, names))
        log_heldout(s.out, n, result.steps, before[n], after)

    try:
        params = {n: [p for module in (*adapters[k][0], *adapters[k][1]) for p in module.parameters()] for k, n in enumerate(names)}
        steps = {n: total_steps(cfg, data[n].train.shape[0]) for n in names}
        results = {n: MixDAResult() for n in names}
        train_domains(model, names, params, steps, results, cfg, step_losses, done, checkpoint, on_step, label="MixDA",
                      segments=segments, logdir=s.out / "tensorboard")
    finally:
        uninstall(model, s.sites)


def _step_losses(s: Setup, segments: Segments, data: dict[str, DomainData], names: list[str], active: list[int],
                 results: dict[str, MixDAResult]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int, int]], list[int]]:
    """Each active domain's language-model loss and retention term at this step, its rows of the
    domain batch (domain index, start, end) and its number of general-text rows."""
    cfg, model, device = s.cfg, s.base.model, s.device
    batches, general, spans, start = [], [], [], 0
    for k in active:
        own = results[names[k]].steps  # a domain's data order and masks follow its own step count
        train = data[names[k]].train
        blocks = train[batch_rows(train.shape[0], cfg.batch_size, cfg.seed, own)]
        batches.append(lm_batch(blocks, s.base.objective, s.base.tokenizer, torch.Generator().manual_seed(step_seed(cfg.seed, own)),
                                cfg.mlm_probability))
        general.append(s.general[batch_rows(s.general.shape[0], cfg.batch_size, cfg.seed, own)])
        spans.append((k, start, start + blocks.shape[0]))
        start += blocks.shape[0]
    # the domain corpus: one cross-entropy over the fused batch, then each domain's mean over its rows
    segments.spans = spans
    lm = lm_losses(model, torch.cat([b["input_ids"] for b in batches]).to(device), torch.cat([b["labels"] for b in batches]),
                   s.base.objective, spans=[(b, e) for _, b, e in spans])
    ends = torch.tensor([g.shape[0] for g in general]).cumsum(0).tolist()
    general_spans = [(k, end - g.shape[0], end) for k, g, end in zip(active, general, ends)]
    retention = retention_terms(model, segments, torch.cat(general).to(device), general_spans)
    return lm, retention, spans, [g.shape[0] for g in general]


def retention_terms(model: torch.nn.Module, segments: Segments, general_ids: torch.Tensor,
                    spans: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Each span's retention term on its rows of general text: MSE(W2 h + DA_k(h), W2 h) at every adapted
    block, averaged over the blocks. Only the backbone runs (no LM head)."""
    segments.spans = spans
    segments.retention = {k: [] for k, _, _ in spans}
    try:
        model.base_model(input_ids=general_ids)
        return [torch.stack(segments.retention[k]).mean() for k, _, _ in spans]
    finally:
        segments.retention = None


def _manifest(s: Setup, data: DomainData, result: MixDAResult, loss_before: float | None, loss_after: float | None,
              started: float, fused_with: list[str]) -> dict:
    cfg = s.cfg
    return domain_manifest(
        KIND, data, cfg, s.base, s.fingerprint, s.device, result, loss_before, loss_after, started,
        method="mixda",
        general_corpus=s.general_info,
        mixda={"layers": [site.index for site in s.sites], "layer_names": [site.name for site in s.sites],
               "reduction": cfg.method_options.mixda_reduction, **widths(s.sites[0], cfg.method_options.mixda_reduction), "lm_weight": LM_WEIGHT,
               "gate": "two-way", "gate_pooling": "causal" if s.base.objective == "clm" else "mean"},
        training={"general_tokens_seen": result.general_tokens_seen, "fused_with": fused_with if len(fused_with) > 1 else [],
                  "lm_loss_curve": downsample_curve(result.lm_losses, 200),
                  "retention_curve": downsample_curve(result.retention_losses, 200)},
    )
