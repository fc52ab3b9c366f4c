"""A training loop's progress, shown three ways: tqdm's bar on a terminal; a line every few percent of
the steps when the output is a log (CI, ``nohup``, ``domix compare``'s job logs); and, when a parent
process asks for it through ``DOMIX_PROGRESS_FILE``, a small JSON file it polls (``domix compare``
draws one line per running job from these)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

PROGRESS_FILE_ENV = "DOMIX_PROGRESS_FILE"
LINES_PER_RUN = 20  # progress lines a run prints when not on a terminal
FILE_INTERVAL_S = 1.0  # at most one status-file write a second


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s`` or ``42s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """What one training loop has done: ``update`` after each step, ``close`` at the end."""

    def __init__(self, label: str, total: int, initial: int = 0):
        self.label, self.total, self.initial = label, total, initial
        self.steps, self.loss, self.tokens_per_s = initial, None, None
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=label, unit="step", dynamic_ncols=True, disable=None, mininterval=1.0)
        self.lines = self.bar.disable  # no bar (not a terminal): print lines instead
        self.every = max(1, math.ceil(total / LINES_PER_RUN))
        self.file = os.environ.get(PROGRESS_FILE_ENV)
        self.written = 0.0

    def eta_s(self) -> float | None:
        done = self.steps - self.initial
        if done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * (self.total - self.steps)

    def update(self, loss: str, tokens_per_s: float) -> None:
        self.steps += 1
        self.loss, self.tokens_per_s = loss, tokens_per_s
        self.bar.update(1)
        self.bar.set_postfix(loss=loss, tok_s=f"{tokens_per_s:,.0f}")
        if self.lines and (self.steps % self.every == 0 or self.steps == self.total):
            print(f"domix: {self.label}: {self.status()}", flush=True)
        if self.file and (time.perf_counter() - self.written >= FILE_INTERVAL_S or self.steps == self.total):
            self._write()

    def status(self) -> str:
        return (f"step {self.steps}/{self.total}, loss {self.loss}, {self.tokens_per_s:,.0f} tok/s, "
                f"ETA {duration(self.eta_s())}")

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self._write()

    def _write(self) -> None:
        """The status for a parent process; written by rename so a reader never sees half of it."""
        self.written = time.perf_counter()
        record = {"label": self.label, "step": self.steps, "total": self.total, "loss": self.loss,
                  "tokens_per_s": self.tokens_per_s, "eta_s": self.eta_s(), "time": time.time()}
        path = Path(self.file)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError as err:  # the parent's display is not worth a failed run
            print(f"domix: cannot write progress to {path} ({err.strerror})", file=sys.stderr)
            self.file = None
