"""Output folders of runs: never clobber a finished run, resume only with the same settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from domix import atomic
from domix.errors import DomixError

RUN_FILE = "run.json"


def check_corpora_unchanged(recorded: dict[str, str | None], fingerprints: dict[str, str]) -> None:
    """Refuse to resume when a corpus an unfinished run recorded (name -> fingerprint) now reads otherwise."""
    changed = [n for n, fp in recorded.items() if fingerprints.get(n) != fp]
    if changed:
        raise DomixError(f"the corpus of domain(s) {changed} changed since this unfinished run began; "
                         "restore it, or pass --overwrite to start over")


def check_out(out: Path, settings: dict, resume_free: tuple[str, ...], overwrite: bool) -> dict | None:
    """Check ``out`` can take this run; return its previous run record (None for a new folder)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".domix-write-test-{os.getpid()}"  # one per process: several may check at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise DomixError(f"cannot write to output folder {out} ({err.strerror}); choose a folder you can write to") from None
    run_file = out / RUN_FILE
    if not run_file.exists():
        if any(not p.name.startswith(".domix-write-test") for p in out.iterdir()):
            raise DomixError(f"output folder {out} is not empty and holds no domix run; choose an empty or new folder")
        return None
    previous = atomic.read_json(run_file)
    if overwrite:
        return previous
    if previous.get("status") == "finished":
        raise DomixError(f"{out} holds a finished run; pass --overwrite to replace it or choose another --out")
    old = previous.get("config", {})
    differing = sorted(k for k in (set(old) | set(settings)) - set(resume_free) if old.get(k) != settings.get(k))
    if differing:
        raise DomixError(
            f"{out} holds an unfinished run with other settings ({', '.join(differing)}); "
            "rerun it with the same settings to resume, or pass --overwrite to start over"
        )
    return previous


def clear(out: Path) -> None:
    """Remove what a previous run wrote (for --overwrite, once the new run's inputs checked out)."""
    for child in Path(out).iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
