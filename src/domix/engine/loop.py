"""The training engine: the single-model loop, and what every loop shares (seeds, guards, progress).

Every step is a pure function of (seed, step, weights, optimizer state): the data order comes from a
per-epoch permutation, masks and dropout from a per-step seed. So a run that resumes from a
checkpoint ends with exactly the weights an uninterrupted run makes.

Every loop takes its steps through :func:`update`, so every method gets the same guards: a non-finite
loss or gradient stops the run with one message and keeps the last checkpoint; gradients are
clipped; with several processes the gradients are summed first. :func:`train` is the loop of one
model (a domain module, a baseline's phase, MoDE's experts, a task model, an instruction-tuned LM);
``engine.fused.train_domains`` is the loop of several domains trained at once over one base.
"""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from domix.base_model import set_gradient_checkpointing
from domix.batches import lm_batch
from domix.engine import checkpoint
from domix.engine.distributed import DataParallel
from domix.engine.logs import closing, tensorboard
from domix.engine.progress import Progress
from domix.errors import DomixError
from domix.lm_loss import lm_losses, predicted_tokens
from domix.tokens import Blocks

# Called after every step with (the domain or task training, steps done, loss, model); tests use it to look inside.
StepHook = Callable[[str, int, float, nn.Module], None]


@dataclass
class TrainResult:
    """A loop's progress, kept in its checkpoints."""

    steps: int = 0
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)  # one per step
    train_seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # what a recipe tracks besides: dev history, the best epoch and its weights


@dataclass
class Loop:
    """How :func:`train` runs: what it trains (for messages), how long, and its guards' settings."""

    label: str
    total: int
    seed: int
    lr: float
    max_grad_norm: float
    checkpoint_every: int
    gradient_checkpointing: bool = False


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def non_finite(what: str, step: int, label: str, checkpoint_path: Path, lr: float) -> DomixError:
    """The one error of every loop when a loss or gradient is NaN or infinite."""
    kept = f"the last good checkpoint is kept at {checkpoint_path}" if Path(checkpoint_path).exists() else "no checkpoint was written yet"
    return DomixError(f"non-finite {what} at step {step} of {label}; training stopped and {kept}. Lower --lr (now {lr:g}), "
                      "or use --dtype float32 if the model runs in float16, then rerun")


def update(loss: torch.Tensor, params: list[nn.Parameter], optimizer, scheduler, loop: Loop, step: int,
           checkpoint_path: Path, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, backward: bool = True) -> None:
    """One guarded optimizer step on ``loss`` (``backward=False``: its gradients are already there).

    With ``reduce`` (several processes sharing each batch), each gradient is summed over them first.
    """
    if not torch.isfinite(loss):
        raise non_finite("loss", step + 1, loop.label, checkpoint_path, loop.lr)
    if backward:
        loss.backward()
    if reduce is not None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            reduce(p.grad)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, loop.max_grad_norm)
    if not torch.isfinite(grad_norm):
        raise non_finite("gradient", step + 1, loop.label, checkpoint_path, loop.lr)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train(
    model: nn.Module,
    optimizer,
    scheduler,
    loop: Loop,
    step_loss: Callable[[int], tuple[torch.Tensor, int]],
    checkpoint_path: Path,
    on_step: StepHook | None = None,
    logdir: Path | None = None,
    after_step: Callable[[TrainResult, Callable[[str, float], None]], bool] | None = None,
    fresh: Callable[[], TrainResult] = TrainResult,
    dp: DataParallel | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` for ``loop.total`` steps, resuming from a checkpoint.

    ``step_loss(step)`` returns the step's loss (the model run on its batch) and its token count.
    ``after_step(progress, log)`` runs after each step (a dev evaluation at an epoch's end; ``log(tag,
    value)`` adds a TensorBoard scalar) and returns whether to checkpoint now; otherwise a checkpoint is
    written every ``loop.checkpoint_every`` steps. ``fresh()`` makes the progress of a run with no
    checkpoint yet. ``logdir``: TensorBoard scalars (train/loss, train/lr, train/tokens_per_s) go
    there. ``dp``: this process is one of a data-parallel group; ``step_loss`` gives its part of the batch's
    loss, the gradients are summed over the group, and the group's leader writes the checkpoints and logs.
    """
    reduce = dp.all_reduce_ if dp is not None else None
    saves = dp is None or dp.is_leader
    params = trainable(model)
    result = checkpoint.restore(checkpoint_path, params, optimizer, scheduler)
    if isinstance(result, dict):  # written by an earlier version, whose task loops kept their progress as a dict
        result = TrainResult(steps=result.pop("steps"), losses=result.pop("losses"), train_seconds=result.pop("train_seconds"), extra=result)
    if result is None:
        result = fresh()
    else:
        print(f"domix: resuming {loop.label} from step {result.steps} ({checkpoint_path})")
    trained = list(params.values())
    writer = tensorboard(logdir) if logdir is not None and saves else None

    def log(tag: str, value: float) -> None:
        if writer is not None:
            writer.add_scalar(tag, value, result.steps)

    with checkpointed(model, loop.gradient_checkpointing), closing(writer):
        model.train()
        bar = Progress(loop.label, loop.total, result.steps)
        session_start, session_tokens = time.perf_counter(), 0
        while result.steps < loop.total:
            step = result.steps
            torch.manual_seed(step_seed(loop.seed, step))  # dropout
            t0 = time.perf_counter()
            loss, tokens = step_loss(step)
            update(loss, trained, optimizer, scheduler, loop, step, checkpoint_path, reduce)
            if reduce is not None:
                loss = reduce(loss.detach().float())  # the whole batch's loss (float32 on every process, one without rows too)
            if loss.device.type == "cuda":
                torch.cuda.synchronize(loss.device)
            result.steps += 1
            result.tokens_seen += tokens
            loss_value = loss.item()
            result.losses.append(loss_value)
            result.train_seconds += time.perf_counter() - t0
            session_tokens += tokens
            tokens_per_s = session_tokens / max(time.perf_counter() - session_start, 1e-9)
            bar.update(f"{loss_value:.3f}", tokens_per_s)
            log("train/loss", loss_value)
            log("train/lr", scheduler.get_last_lr()[0])
            log("train/tokens_per_s", tokens_per_s)
            due = after_step(result, log) if after_step is not None else False
            if saves and (due or result.steps % loop.checkpoint_every == 0 and result.steps < loop.total):
                checkpoint.save(checkpoint_path, params, optimizer, scheduler, result)
            if on_step is not None:
                on_step(loop.label, result.steps, loss_value, model)
        bar.close()
    return result


def train_domain(
    model: nn.Module,
    domain: str,
    train_blocks: Blocks,
    objective: str,
    tokenizer,
    cfg,
    device: torch.device,
    checkpoint_path: Path,
    on_step: StepHook | None = None,
    logdir: Path | None = None,
    dp: DataParallel | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` on one domain's blocks with the language-model loss
    (``cfg``: a PretrainConfig), resuming from a checkpoint.

    With ``dp``, this process takes its slice of every batch; the loss is normalised by the
    whole batch's token count and gradients are summed over the group, so every process of
    the group takes the step a single process would.
    """
    from transformers import get_linear_schedule_with_warmup

    params = trainable(model)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_steps = total_steps(cfg, train_blocks.shape[0])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * n_steps), n_steps)

    def step_loss(step: int) -> tuple[torch.Tensor, int]:
        blocks = train_blocks[batch_rows(train_blocks.shape[0], cfg.batch_size, cfg.seed, step)]
        batch = lm_batch(blocks, objective, tokenizer, torch.Generator().manual_seed(step_seed(cfg.seed, step)), cfg.mlm_probability)
        if dp is None:
            return lm_losses(model, batch["input_ids"].to(device), batch["labels"], objective)[0], blocks.numel()
        return _slice_loss(model, batch, objective, dp, device), blocks.numel()

    loop = Loop(f"domain {domain!r}", n_steps, cfg.seed, cfg.lr, cfg.max_grad_norm, cfg.checkpoint_every, cfg.gradient_checkpointing)
    return train(model, optimizer, scheduler, loop, step_loss, checkpoint_path, on_step=_as_domain_hook(on_step, domain),
                 logdir=logdir, dp=dp)


def _as_domain_hook(on_step: StepHook | None, domain: str) -> StepHook | None:
    """Report the domain's name (not the loop's label) to a pre-training hook."""
    if on_step is None:
        return None
    return lambda _label, steps, loss, model: on_step(domain, steps, loss, model)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def domain_seed(seed: int, domain: str) -> int:
    """The seed of ``domain``'s initial weights, derived from (run seed, domain name).

    Each domain's module must hold its own subspace: seeded alike, every domain's A would start (and,
    after a short pre-training, stay) nearly equal, and a composition of them would span one domain's
    rank. Derived from the name, not the domain's position, so a domain starts the same alone, fused
    with others, in any order, or on another process.
    """
    digest = hashlib.sha256(f"domix-init:{seed}:{domain}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def total_steps(cfg, n_train: int) -> int:
    """--steps, else --epochs passes of ``n_train`` blocks; a fraction of an epoch (0.25) rounds its steps up."""
    return cfg.steps if cfg.steps is not None else math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size))


def batch_rows(n_train: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the training blocks in ``step``'s batch: a fresh shuffle every epoch."""
    per_epoch = math.ceil(n_train / batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    return perm[i * batch_size : (i + 1) * batch_size]


GROUP_SPAN = 50  # batches per group whose examples are sorted by length (transformers' group_by_length uses 50 too)


def grouped_batch_rows(lengths: list[int], batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of ``step``'s batch when batches hold examples of similar length (``--group-by-length``).

    Each epoch shuffles the examples as :func:`batch_rows` does, sorts each span of ``GROUP_SPAN`` batches
    by length, cuts it into batches, and shuffles the order of those batches: every batch is a random draw
    of similar lengths (a batch pads to its longest, so far fewer padding tokens are computed) and no epoch
    runs from long to short. Same number of batches of the same size as without grouping.
    """
    n = len(lengths)
    per_epoch = math.ceil(n / batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch))).tolist()
    span = batch_size * GROUP_SPAN
    ordered = [j for start in range(0, n, span) for j in sorted(perm[start : start + span], key=lambda j: -lengths[j])]
    batches = [ordered[start : start + batch_size] for start in range(0, n, batch_size)]
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(step_seed(seed, -(10**5) - epoch))).tolist()
    return torch.tensor(batches[shuffle[i]])


def step_batch(lengths: list[int], batch_size: int, seed: int, step: int, grouped: bool) -> list[int]:
    """Indices of ``step``'s batch of examples of these ``lengths``: :func:`grouped_batch_rows` with --group-by-length,
    else :func:`batch_rows` (what domix finetune and domix instruct draw)."""
    if grouped:
        return grouped_batch_rows(lengths, batch_size, seed, step).tolist()
    return batch_rows(len(lengths), batch_size, seed, step).tolist()


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Iterable[dict], objective: str, device) -> float:
    """Mean loss per predicted token over ``batches`` (input_ids, labels and, where rows are padded, attention_mask):
    held-out LM loss in pre-training and retention, dev loss in instruction tuning."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        mask = batch.get("attention_mask")
        total += float(lm_losses(model, batch["input_ids"].to(device), batch["labels"], objective, denominators=[1.0],
                                 attention_mask=mask.to(device) if mask is not None else None)[0])
        count += predicted_tokens(batch["labels"], objective)
    model.train(was_training)
    return total / max(count, 1)


def evaluate(model: nn.Module, blocks: Blocks, objective: str, tokenizer, cfg, device) -> float:
    """Mean loss per predicted token over ``blocks``, with fixed masks (same before and after)."""
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, -(10**6)))
    batches = (lm_batch(blocks[start : start + cfg.batch_size], objective, tokenizer, generator, cfg.mlm_probability)
               for start in range(0, blocks.shape[0], cfg.batch_size))
    return mean_loss(model, batches, objective, device)


@contextmanager
def checkpointed(model: nn.Module, enabled: bool, segments=None) -> Iterator[None]:
    """Activation checkpointing while training (--gradient-checkpointing): each block's activations
    are recomputed in backward instead of kept, for far less memory and about a third more compute.
    Random state is replayed in the recomputation, so the trained weights do not change.

    ``segments`` (an ``engine.fused.RowSegments``): the rows-to-domains map that fused layers read.
    A step may run the model more than once with different maps (MixDA: the domain batch, then the
    general text), so each block's recomputation gets back the map it first ran with."""
    if not enabled:
        yield
        return
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(target, "supports_gradient_checkpointing", False):
        raise DomixError(f"{type(target).__name__} does not support gradient checkpointing; drop --gradient-checkpointing")
    set_gradient_checkpointing(target, True, context_fn=_replaying(segments) if segments is not None else None)
    use_cache = getattr(target.config, "use_cache", None)
    target.config.use_cache = False  # a cache is of no use in training, and recomputation would fill it twice
    try:
        yield
    finally:
        set_gradient_checkpointing(target, False)
        target.config.use_cache = use_cache


def _replaying(segments):
    """A ``torch.utils.checkpoint`` context_fn: the recomputation of a block sees the state (``segments.state()``)
    its forward saw, so it runs the same operations on the same rows."""
    from contextlib import nullcontext

    @contextmanager
    def replay(state):
        now = segments.state()
        segments.set_state(state)
        try:
            yield
        finally:
            segments.set_state(now)

    return lambda: (nullcontext(), replay(segments.state()))


def my_rows(rows: list, dp: DataParallel | None) -> list:
    """This process's slice of a batch's rows (all of them in a single process)."""
    return rows if dp is None else rows[dp.index :: dp.size]


def share(loss: torch.Tensor, mine: int, total: int) -> torch.Tensor:
    """A mean loss over this process's ``mine`` items as its part of the mean over the batch's ``total``:
    summed over the processes, the parts make the whole batch's mean."""
    return loss * (mine / max(total, 1))


def no_rows(device) -> torch.Tensor:
    """The loss part of a process left without rows (a short last batch): zero, with no gradient of its own
    (``update`` gives its parameters zero gradients before they are summed over the processes)."""
    return torch.zeros((), device=device, requires_grad=True)


def _slice_loss(model: nn.Module, batch: dict[str, torch.Tensor], objective: str, dp: DataParallel, device) -> torch.Tensor:
    """This process's share of the batch loss: its rows' token losses over the batch's token count."""
    count = predicted_tokens(batch["labels"], objective)
    ids, labels = my_rows(batch["input_ids"], dp), my_rows(batch["labels"], dp)
    if ids.shape[0] == 0:  # a short last batch can leave a process without rows
        return no_rows(device)
    return lm_losses(model, ids.to(device), labels, objective, denominators=[max(count, 1)])[0]

