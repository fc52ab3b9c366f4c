"""The engine's fused loop: K domains trained at once over one frozen base (:func:`train_domains`).

A fused step stacks rows of every unfinished domain into one batch; each domain's own layers (LoRA
pairs, MixDA adapters) act on its rows only (``RowSegments``). Each domain keeps its own loss,
optimizer, schedule, clipping and progress, saved together in one atomic checkpoint, so its
weights are the ones a separate run (``engine.loop.train``) makes.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from domix.engine import checkpoint
from domix.engine.logs import closing, tensorboard
from domix.engine.loop import Loop, StepHook, TrainResult, checkpointed, non_finite, step_seed, update
from domix.engine.progress import Progress


class RowSegments:
    """Which rows of the current batch belong to which domain: [(domain index, start, end)]."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int, int | None]] = []
        self._mask: tuple[tuple, torch.Tensor] | None = None  # (its key, the last column mask)

    def column_mask(self, width: int, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A 0/1 mask shaped (rows of ``x``, 1, ..., len(spans)·width): each row's own span's block of
        ``width`` columns. Every fused layer of a forward pass asks for the same one, so it is made once."""
        key = (tuple(self.spans), width, x.shape[0], x.dim(), dtype, x.device)
        if self._mask is None or self._mask[0] != key:
            mask = torch.zeros(x.shape[0], *([1] * (x.dim() - 2)), len(self.spans) * width, dtype=dtype, device=x.device)
            for i, (_, start, end) in enumerate(self.spans):
                mask[start:end, ..., i * width : (i + 1) * width] = 1
            self._mask = (key, mask)
        return self._mask[1]

    def only(self, k: int) -> None:
        self.spans = [(k, 0, None)]  # the whole batch is domain k (evaluation)

    def state(self):
        """What the layers read (for a recomputation under gradient checkpointing to see it again)."""
        return list(self.spans)

    def set_state(self, state) -> None:
        self.spans = state


def save_domains(path: Path, step: int, names: list[str], params, optimizers, schedulers, results) -> None:
    """Checkpoint a fused run: the group step, and every domain's weights, optimizer, schedule and progress."""
    checkpoint.write(path, {"step": step, "domains": {n: {
        "params": [p.detach().cpu() for p in params[n]], "optimizer": optimizers[n].state_dict(),
        "scheduler": schedulers[n].state_dict(), "result": results[n]} for n in names}})


def restore_domains(path: Path, names: list[str], params, optimizers, schedulers, results, label: str = "fused") -> int:
    """Load a :func:`save_domains` checkpoint into ``names`` (a domain it lacks starts afresh); the group
    step it was at, 0 without a checkpoint."""
    if not path.exists():
        return 0
    state = checkpoint.read(path)
    for n in names:
        saved = state["domains"].get(n)
        if saved is None:
            continue
        with torch.no_grad():
            for p, value in zip(params[n], saved["params"]):
                p.copy_(value)
        optimizers[n].load_state_dict(saved["optimizer"])
        schedulers[n].load_state_dict(saved["scheduler"])
        results[n] = saved["result"]
    print(f"domix: resuming {label} domains {names} from step {state['step']} ({path})")
    return state["step"]



@dataclass
class FusedStep:
    """What a fused trainer computes for one step: each active domain's loss and rows of the batch."""

    losses: list[torch.Tensor]  # one per span, in the spans' order
    spans: list[tuple[int, int, int]]  # (domain index, first row, end row)
    record: Callable[[int, TrainResult], None] | None = None  # extra bookkeeping per domain (its index, progress)


def train_domains(
    model: nn.Module,
    names: list[str],
    params: dict[str, list[nn.Parameter]],
    steps: dict[str, int],
    results: dict[str, TrainResult],
    cfg,
    step_losses: Callable[[list[int]], FusedStep],
    on_done: Callable[[int, TrainResult], None],
    checkpoint_path: Path,
    on_step: StepHook | None = None,
    label: str = "fused",
    segments: RowSegments | None = None,
    logdir: Path | None = None,
) -> None:
    """Train the domains ``names`` together: the loop of every fused trainer (DoMIX modules, MixDA adapters).

    Each domain has its own AdamW and linear schedule (``cfg``'s lr, weight decay, warm-up; a
    PretrainConfig), its own ``steps[name]`` and progress ``results[name]``. At every step
    ``step_losses(active)`` runs the model on the active domains' rows; each domain's parameters get
    the gradient of its own loss only, clipped and checked by ``engine.loop.update``. ``on_done(k, progress)``
    is called as domain k finishes; ``segments``: the fused layers' rows-to-domains map (see
    ``engine.loop.checkpointed``); ``logdir``: each domain's TensorBoard scalars go to ``logdir/<domain>``. A checkpoint of every domain is written every
    ``cfg.checkpoint_every`` steps and whenever a domain finishes, so a rerun resumes exactly.
    """
    from transformers import get_linear_schedule_with_warmup

    optimizers = {n: torch.optim.AdamW(params[n], lr=cfg.lr, weight_decay=cfg.weight_decay) for n in names}
    schedulers = {n: get_linear_schedule_with_warmup(optimizers[n], int(cfg.warmup_ratio * steps[n]), steps[n]) for n in names}
    step = restore_domains(checkpoint_path, names, params, optimizers, schedulers, results, label)
    writers = {n: tensorboard(logdir / n) for n in names} if logdir is not None else {}
    with checkpointed(model, cfg.gradient_checkpointing, segments), ExitStack() as stack:
        for writer in writers.values():
            stack.enter_context(closing(writer))
        model.train()
        bar = Progress("+".join(names), max(steps.values()), step)
        started, tokens = time.perf_counter(), 0
        while any(results[n].steps < steps[n] for n in names):
            active = [k for k, n in enumerate(names) if results[n].steps < steps[n]]
            torch.manual_seed(step_seed(cfg.seed, step))  # dropout
            t0 = time.perf_counter()
            out = step_losses(active)
            for (k, _, _), loss in zip(out.spans, out.losses):
                if not torch.isfinite(loss):
                    raise non_finite("loss", results[names[k]].steps + 1, f"domain {names[k]!r}", checkpoint_path, cfg.lr)
            torch.stack(out.losses).sum().backward()  # domain k's parameters see only loss k
            elapsed = time.perf_counter() - t0
            rows = sum(e - s for _, s, e in out.spans)
            finished = []
            for (k, s, e), loss in zip(out.spans, out.losses):
                n, progress = names[k], results[names[k]]
                loop = Loop(f"domain {n!r}", steps[n], cfg.seed, cfg.lr, cfg.max_grad_norm, cfg.checkpoint_every)
                update(loss, params[n], optimizers[n], schedulers[n], loop, progress.steps, checkpoint_path, backward=False)
                progress.steps += 1
                progress.tokens_seen += (e - s) * cfg.seq_len
                progress.losses.append(loss.item())
                progress.train_seconds += elapsed * (e - s) / rows  # the shared step, split by rows
                if writers.get(n) is not None:
                    writers[n].add_scalar("train/loss", progress.losses[-1], progress.steps)
                    writers[n].add_scalar("train/lr", schedulers[n].get_last_lr()[0], progress.steps)
                if out.record is not None:
                    out.record(k, progress)
                if progress.steps == steps[n]:
                    finished.append(k)
            step += 1
            tokens += rows * cfg.seq_len
            bar.update(" ".join(f"{loss.item():.3f}" for loss in out.losses), tokens / (time.perf_counter() - started))
            if on_step is not None:
                for (k, _, _), loss in zip(out.spans, out.losses):
                    on_step(names[k], results[names[k]].steps, loss.item(), model)
            for k in finished:
                on_done(k, results[names[k]])
                model.train()
            # also when a domain finished: a resumed run then goes on with the same domains in its batch
            if any(results[n].steps < steps[n] for n in names) and (step % cfg.checkpoint_every == 0 or finished):
                save_domains(checkpoint_path, step, names, params, optimizers, schedulers, results)
        bar.close()
    checkpoint_path.unlink(missing_ok=True)
