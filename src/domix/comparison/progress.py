"""``domix compare``'s live view: one line per running job (step / total, loss, ETA), read from the status
file each job's training loop writes (``engine.progress``), and a line as each job starts and ends.

On a terminal the job lines are redrawn in place under the finished ones; in a log (not a terminal) the
running jobs' lines are printed every ``DOMIX_PROGRESS_EVERY`` seconds (default 60).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from domix.engine.progress import duration

EVERY_ENV = "DOMIX_PROGRESS_EVERY"
REDRAW_S = 1.0  # terminal redraws a second


@dataclass
class Running:
    number: int
    name: str
    status_file: Path
    started: float = field(default_factory=time.perf_counter)


class Board:
    """The jobs of a comparison as they run; thread-safe (jobs start and end on pool threads)."""

    def __init__(self, total: int, stream: TextIO | None = None, every_s: float | None = None):
        self.total, self.stream = total, stream or sys.stdout
        self.live = self.stream.isatty()
        self.every_s = every_s if every_s is not None else float(os.environ.get(EVERY_ENV, "60"))
        self.running: dict[str, Running] = {}
        self.lock = threading.Lock()
        self.drawn = 0  # job lines on screen below the permanent ones (terminal only)
        self.started = time.perf_counter()
        self.finished = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Board":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        with self.lock:
            self._erase()

    def start(self, number: int, name: str, status_file: Path) -> None:
        with self.lock:
            self.running[name] = Running(number, name, status_file)
            self._say(f"domix: [{number}/{self.total}] started {name}")

    def end(self, name: str, ok: bool) -> None:
        with self.lock:
            job = self.running.pop(name)
            self.finished += ok
            took = duration(time.perf_counter() - job.started)
            self._say(f"domix: [{job.number}/{self.total}] {'finished' if ok else 'FAILED'} {name} in {took}")

    def summary(self) -> str:
        return f"domix: {self.finished} job(s) ran in {duration(time.perf_counter() - self.started)}"

    def lines(self) -> list[str]:
        """One line per running job: its number, name and what its status file says."""
        now = time.perf_counter()
        return [f"  [{job.number}/{self.total}] {job.name}: {_status(job.status_file, now - job.started)}"
                for job in sorted(self.running.values(), key=lambda j: j.number)]

    def _say(self, line: str) -> None:
        """A permanent line: above the live job lines on a terminal."""
        self._erase()
        print(line, file=self.stream, flush=True)
        self._draw()

    def _erase(self) -> None:
        if self.live and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the first job line, clear to the end
            self.drawn = 0

    def _draw(self) -> None:
        if self.live:
            width = _width(self.stream)
            lines = [line[:width] for line in self.lines()]
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
            self.drawn = len(lines)

    def _watch(self) -> None:
        last = time.perf_counter()
        while not self.stop.wait(REDRAW_S if self.live else min(REDRAW_S, self.every_s)):
            with self.lock:
                if self.live:
                    self._erase()
                    self._draw()
                elif time.perf_counter() - last >= self.every_s and self.running:
                    last = time.perf_counter()
                    print("\n".join("domix:" + line[1:] for line in self.lines()), file=self.stream, flush=True)


def _status(path: Path, elapsed: float) -> str:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet: loading the model, tokenizing, evaluating
        return f"starting ({duration(elapsed)})"
    if record["step"] >= record["total"]:  # evaluating, saving
        return f"{record['label']} trained ({record['total']} steps), finishing up ({duration(elapsed)} so far)"
    percent = 100 * record["step"] / max(record["total"], 1)
    return (f"{record['label']} step {record['step']}/{record['total']} ({percent:.0f}%), loss {record['loss']}, "
            f"ETA {duration(record.get('eta_s'))} ({duration(elapsed)} so far)")


def _width(stream: TextIO) -> int:
    """The terminal's columns; 200 where it does not say (a pseudo-terminal may report 0)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 200
    except (OSError, ValueError, AttributeError):
        return 200
