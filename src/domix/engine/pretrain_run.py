"""The run-folder lifecycle every pre-training method shares, from checking the folder to the summary.

1. :meth:`PretrainRun.open`: the output folder may take this run (a finished run is never replaced
   without --overwrite; an unfinished one resumes only with the same settings), the corpora read,
   and, when resuming, unchanged since the run began; the tokenizer.
2. :meth:`PretrainRun.domain_data`: the training and held-out blocks of the domains still to train,
   all checked before the (possibly large) model is loaded.
3. :meth:`PretrainRun.load_base`: the base model on its device, refused when resuming on other weights.
4. :meth:`PretrainRun.start`: ``run.json`` says the run is running (after clearing with --overwrite).
5. :meth:`PretrainRun.finish`: ``run.json`` says it finished, with each output's held-out losses.

A method's trainer adds what is its own between 3 and 5. :func:`domain_manifest` is the record each
per-domain output (a LoRA module, MixDA adapters, MoDE experts) keeps beside its weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from domix.base_model import BaseModel, load_base_model, load_tokenizer, model_reference, weights_fingerprint
from domix.corpus import Corpus, read_corpus
from domix.engine.data import DomainData
from domix.engine.loop import TrainResult, domain_seed
from domix.engine.runfolder import RunFolder, check_corpora_unchanged
from domix.errors import DomixError
from domix.metrics import downsample_curve
from domix.store import MANIFEST_NAME, versions
from domix.system import DTYPES, peak_memory_mb


@dataclass
class PretrainRun:
    folder: RunFolder  # the lifecycle every run shares
    corpora: dict[str, Corpus]
    tokenizer: object
    objective: str  # mlm or clm

    @classmethod
    def open(cls, cfg, overwrite: bool, extra: dict[str, Corpus] | None = None) -> "PretrainRun":
        """Check the folder, read the corpora (and ``extra`` ones, e.g. general text: key -> corpus,
        recorded in run.json under that key), and the tokenizer."""
        folder = RunFolder.open(cfg, overwrite)
        corpora = {name: read_corpus(name, path, cfg.text_column) for name, path in cfg.domains.items()}
        run = cls(folder, corpora, None, "")
        if run.resuming:
            extra, previous = extra or {}, folder.previous
            check_corpora_unchanged({**previous.get("corpora", {}), **{k: previous.get(k) for k in extra}},
                                    {**run.fingerprints, **{k: c.fingerprint for k, c in extra.items()}})
        run.tokenizer, run.objective = load_tokenizer(cfg.model, cfg.objective)
        return run

    @property
    def cfg(self):  # a PretrainConfig
        return self.folder.cfg

    @property
    def out(self) -> Path:
        return self.folder.out

    @property
    def previous(self) -> dict | None:
        return self.folder.previous

    @property
    def resuming(self) -> bool:
        return self.folder.resuming

    @property
    def fingerprints(self) -> dict[str, str]:
        return {name: c.fingerprint for name, c in self.corpora.items()}

    def pending(self) -> list[str]:
        """The domains without a finished output (all of them in a new run)."""
        return [n for n in self.corpora if not (self.resuming and (self.out / n / MANIFEST_NAME).exists())]

    def domain_data(self, names: list[str]) -> dict[str, DomainData]:
        return {name: DomainData.build(self.corpora[name], self.tokenizer, self.objective, self.cfg) for name in names}

    def load_base(self, device: torch.device) -> tuple[BaseModel, str]:
        """The base model on ``device`` and its weights' fingerprint."""
        base = load_base_model(self.cfg.model, self.objective, DTYPES[self.cfg.dtype], self.tokenizer)
        base.model.to(device)
        fingerprint = weights_fingerprint(base.model)
        if self.resuming and self.previous.get("base_fingerprint") != fingerprint:
            raise DomixError(f"the weights of base model {self.cfg.model} changed since this unfinished run began; "
                             "use the same model, or pass --overwrite to start over")
        return base, fingerprint

    def start(self, fingerprint: str, write: bool = True, **extra) -> dict:
        """The run's record, written as running (``write``: this is the process that writes)."""
        return self.folder.start(write=write, base_fingerprint=fingerprint, corpora=self.fingerprints,
                                 domains=list(self.cfg.domains), **extra)

    def finish(self, run: dict, manifests: dict[str, dict], summary: dict) -> None:
        """Record the run as finished with ``summary`` (output -> its held-out losses)."""
        self.folder.record = run
        self.folder.finish(summary=summary)


def heldout_summary(manifests: dict[str, dict]) -> dict:
    return {n: {k: m["heldout"][k] for k in ("loss_before", "loss_after")} for n, m in manifests.items()}


def domain_manifest(kind: str, data: DomainData, cfg, base: BaseModel, fingerprint: str, device, result: TrainResult,
                    loss_before: float | None, loss_after: float | None, started: float, **extra) -> dict:
    """What every per-domain output records: its corpus, base, training, held-out losses, cost and versions.

    ``extra``: the method's own sections (``lora``, ``mixda``, ``mode``, ...); a ``training`` mapping in it
    adds to the common training record.
    """
    corpus, heldout = data.corpus, data.heldout
    training = {
        "steps": result.steps, "tokens_seen": result.tokens_seen, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
        "lr": cfg.lr, "weight_decay": cfg.weight_decay, "warmup_ratio": cfg.warmup_ratio, "seed": cfg.seed,
        "init_seed": domain_seed(cfg.seed, corpus.name),  # the domain's own initialisation (engine.loop.domain_seed)
        "dtype": cfg.dtype, "device": str(device), "loss_curve": downsample_curve(result.losses, 200),
        **extra.pop("training", {}),
    }
    return {
        "name": corpus.name,
        "kind": kind,
        "corpus": {"path": corpus.path, "fingerprint": corpus.fingerprint, "passages": corpus.passages, "tokens": data.tokens},
        "base_model": {"name": model_reference(cfg.model), "fingerprint": fingerprint, "model_type": base.model.config.model_type},
        "objective": base.objective,
        **extra,
        "training": training,
        "heldout": {"sequences": len(heldout), "tokens": int(heldout.numel()), "loss_before": loss_before, "loss_after": loss_after},
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_time_s": round(result.train_seconds, 2),
        "peak_memory_mb": peak_memory_mb(device),
        "versions": versions(),
    }
