"""What a run logs besides its run folder: TensorBoard scalars and the pre-training summary table."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def closing(writer) -> Iterator[None]:
    """Close ``writer`` (a TensorBoard writer, or None) on the way out."""
    try:
        yield
    finally:
        if writer is not None:
            writer.close()


def tensorboard(logdir: Path):
    """A TensorBoard writer for ``logdir``, or None when tensorboard (optional) is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(logdir))


def log_heldout(out: Path, name: str, steps: int, before: float | None, after: float | None) -> None:
    writer = tensorboard(out / "tensorboard" / name)
    if writer is not None:
        for tag, value in (("heldout/loss_before", before), ("heldout/loss_after", after)):
            if value is not None:
                writer.add_scalar(tag, value, steps)
        writer.close()


def format_summary(manifests: dict[str, dict]) -> str:
    rows = [("domain", "steps", "tokens", "held-out before", "held-out after", "change", "time (s)", "peak MB")]
    for name, m in manifests.items():
        before, after = m["heldout"]["loss_before"], m["heldout"]["loss_after"]
        change = f"{after - before:+.3f}" if before is not None else "-"
        rows.append((
            name, str(m["training"]["steps"]), f"{m['training']['tokens_seen']:,}",
            f"{before:.3f}" if before is not None else "-", f"{after:.3f}" if after is not None else "-",
            change, f"{m['wall_time_s']:.0f}", f"{m['peak_memory_mb']:.0f}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

