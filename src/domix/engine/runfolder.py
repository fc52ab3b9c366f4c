"""Output folders of runs: never clobber a finished run, resume only with the same settings."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from domix import atomic
from domix.errors import DomixError
from domix.layout import MODEL_DIR, RESULT_FILE, RUN_FILE  # noqa: F401  (importers of the run folder's names read them here too)
from domix.settings import renamed


def check_corpora_unchanged(recorded: dict[str, str | None], fingerprints: dict[str, str]) -> None:
    """Refuse to resume when a corpus an unfinished run recorded (name -> fingerprint) now reads otherwise."""
    changed = [n for n, fp in recorded.items() if fingerprints.get(n) != fp]
    if changed:
        raise DomixError(f"the corpus of domain(s) {changed} changed since this unfinished run began; "
                         "restore it, or pass --overwrite to start over")


# what each command's run.json holds, for folders written before run.json named its kind
KIND_NAMES = {"pretrain": "a module store (domix pretrain)", "finetune": "a fine-tuning run (domix finetune)",
              "instruct": "an instruction-tuning run (domix instruct)"}


def run_kind(record: dict) -> str | None:
    """The command that wrote a run record: its own "kind", or what its settings show (older records)."""
    if record.get("kind"):
        return record["kind"]
    config = record.get("config", {})
    return "pretrain" if "objective" in config else "instruct" if "template" in config else "finetune" if "task" in config else None


def refuse_own_inputs(out: str | Path, inputs: list[str | Path]) -> None:
    """Refuse an output that is, holds or lies inside one of the command's own inputs (writing it,
    let alone replacing it, would destroy the input). Inputs that are not on disk (a hub model name) pass."""
    target = Path(out).resolve()
    for given in inputs:
        if not given or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if target == source or target in source.parents or source in target.parents:
            raise DomixError(f"the output {out} is, holds or lies inside the input {given}, which writing it would destroy; "
                             "choose another output folder")


def refuse_other_kind(out: Path, previous: dict, kind: str | None) -> None:
    """Refuse to put a run of ``kind`` where another command's run (``previous``, its run.json) is:
    --overwrite replaces a run of the same kind only, never, say, a module store with a task run."""
    found = run_kind(previous)
    if kind and found and found != kind:
        raise DomixError(f"{out} holds {KIND_NAMES.get(found, found)}, which --overwrite does not replace with "
                         f"{KIND_NAMES.get(kind, kind)}; choose another --out (or delete that folder yourself if you mean to)")


def check_out(out: Path, cfg: Any, overwrite: bool) -> dict | None:
    """Check ``out`` can take the run of settings ``cfg`` (a settings.RunSettings); return its previous run record
    (None for a new folder). ``--overwrite`` replaces only a run of the same command; the run's own inputs
    (``cfg.inputs()``) are never an output, even with ``overwrite``; an unfinished run resumes only under the same
    settings (:func:`changed_settings`)."""
    out, kind, inputs = Path(out), cfg.COMMAND, cfg.inputs()
    refuse_own_inputs(out, inputs)
    if not out.exists():  # made when the run begins: a run refused before that leaves no folder behind
        _check_writable_parent(out)
        return None
    try:
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
    refuse_other_kind(out, previous, kind)
    if overwrite:
        return previous
    if previous.get("status") == "finished":
        raise DomixError(f"{out} holds a finished run; pass --overwrite to replace it or choose another --out")
    differing = changed_settings(previous.get("config", {}), cfg)
    if differing:
        raise DomixError(
            f"{out} holds an unfinished run with other settings ({', '.join(differing)}); "
            "rerun it with the same settings to resume, or pass --overwrite to start over"
        )
    return previous


def changed_settings(recorded: dict, cfg: Any) -> list[str]:
    """The settings of ``cfg`` that a recorded run (its run.json "config") has other values of, as the run's outcome
    sees them: the one rule by which a run resumes (:func:`check_out`) and a comparison reuses a finished run. A path
    is the file it names, wherever the run was started from; ``domains`` unset is the whole store in its own order;
    a setting the record lacks came after it (the run had its default), one it names by an older name is read under
    today's (``RENAMED``); the settings a run may differ in (``RESUME_FREE``: where it runs, a recipe's name) are not
    compared, nor other methods' settings (a run holds only its own method's)."""
    recorded = renamed(type(cfg), recorded)
    planned, defaults, free = cfg.to_dict(), type(cfg)(method=cfg.method).to_dict(), set(cfg.RESUME_FREE)

    def value(key: str, values: dict) -> Any:
        v = values.get(key, defaults[key])
        if key == "domains" and v is None and values.get("modules"):
            from domix.store import domain_folders

            return [folder.name for folder in domain_folders(values["modules"])]
        if key in cfg.PATHS:
            return _resolved(v)
        return v

    return sorted(k for k in planned if k not in free and value(k, recorded) != value(k, planned))


def _resolved(value: Any) -> Any:
    """Paths (alone, in a list, or the values of a mapping) as the files they name."""
    if isinstance(value, str) and value:
        return Path(value).resolve()
    if isinstance(value, list):
        return [_resolved(v) for v in value]
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    return value


def check_new_output(out: str | Path, inputs: list[str | Path], overwrite: bool, what: str = "a model folder") -> None:
    """Check, before any compute, that a command may put a new folder at ``out``.

    Refused: something already there (unless ``overwrite``; a file never: it is not a folder this
    command made; another command's run or store never: ``what`` names what this command writes), any
    of the command's own ``inputs`` or a folder holding or inside one (even with ``overwrite``:
    replacing it would delete the input), and a place the user cannot write.
    """
    out = Path(out)
    refuse_own_inputs(out, inputs)
    if out.is_file() or out.is_symlink() and not out.is_dir():
        raise DomixError(f"the output {out} is a file; choose a new folder name")
    if out.is_dir() and ((out / RUN_FILE).is_file() or any(out.glob("*/domix_manifest.json"))):
        found = run_kind(atomic.read_json(out / RUN_FILE)) if (out / RUN_FILE).is_file() else "pretrain"
        raise DomixError(f"{out} holds {KIND_NAMES.get(found, 'a domix run')}, which --overwrite does not replace with {what}; "
                         "choose another output folder (or delete that one yourself if you mean to)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DomixError(f"the output folder {out} exists and is not empty; pass --overwrite to replace it or choose another")
    _check_writable_parent(out)


def _check_writable_parent(out: Path) -> None:
    """Refuse a new folder ``out`` whose nearest existing parent the user cannot write in."""
    parent = Path(out).resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DomixError(f"cannot write the output {out}: {parent} is not a folder you can write to; choose another")


@dataclass
class RunFolder:
    """A run's folder through its life, the same for domix pretrain, finetune and instruct.

    1. :meth:`open`: the folder may take the run of ``cfg`` (:func:`check_out`: a finished run is never replaced
       without --overwrite, an unfinished one resumes only under the same settings);
    2. :meth:`start`: once every process has checked it, ``run.json`` says the run is running (what a previous run
       wrote goes first, with --overwrite);
    3. the recipe trains, checkpointing into the folder;
    4. :meth:`finish`: ``run.json`` says it finished, with the run's summary; the checkpoints go.
    """

    cfg: Any  # a settings.RunSettings
    previous: dict | None  # the unfinished (or, with overwrite, any) run found in the folder
    overwrite: bool
    record: dict = field(default_factory=dict)  # run.json as this run writes it

    @classmethod
    def open(cls, cfg: Any, overwrite: bool) -> "RunFolder":
        return cls(cfg, check_out(cfg.out, cfg, overwrite), overwrite)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def resuming(self) -> bool:
        return self.previous is not None and not self.overwrite

    def start(self, ranks: Any = None, write: bool = True, **extra: Any) -> dict:
        """Record the run as running (``extra``: what the recipe adds to run.json); returns the record. With ``ranks``
        (engine.distributed.Ranks) the main process writes, once every process has checked the folder; without, the
        process writes if ``write``."""
        self.record = {"status": "running", "kind": self.cfg.COMMAND, "method": self.cfg.method, "config": self.cfg.to_dict(),
                       **extra}
        if ranks is not None:
            ranks.barrier()
        if ranks.is_main if ranks is not None else write:
            if self.previous is not None and self.overwrite:
                clear(self.out)
            atomic.write_json(self.out / RUN_FILE, self.record)
        if ranks is not None:
            ranks.barrier()
            if ranks.world > 1:
                print(f"domix: process {ranks.rank} of {ranks.world}, data-parallel")
        return self.record

    def finish(self, **summary: Any) -> None:
        """Record the run as finished with ``summary``; a store's folder of checkpoints goes if its domains left it
        empty (it may hold what a user put there)."""
        self.record.update(status="finished", **summary)
        atomic.write_json(self.out / RUN_FILE, self.record)
        try:
            (self.out / "checkpoints").rmdir()
        except OSError:  # absent, or holding other files
            pass

    def finish_task(self, record: dict, save: Callable[[Path], None] | None, ranks: Any, **summary: Any) -> None:
        """The end of a task run (finetune, instruct): the main process saves the model (``save(folder)``, unless
        None), writes ``result.json`` and finishes the run."""
        if not ranks.is_main:  # the main process writes what every process trained alike
            return
        if save is not None:
            save(self.out / MODEL_DIR)
        atomic.write_json(self.out / RESULT_FILE, record)
        shutil.rmtree(self.out / "checkpoint", ignore_errors=True)
        self.finish(**summary)


def check_new_file(path: str | Path, inputs: list[str | Path] = ()) -> None:
    """Check, before any compute, that a command can write its output file at ``path`` (replacing a file,
    never one of the command's own ``inputs``)."""
    path = Path(path)
    for given in inputs:
        if given and Path(given).exists() and path.resolve() == Path(given).resolve():
            raise DomixError(f"{path} is the input {given}, which writing it would destroy; give another file name")
    if path.is_dir():
        raise DomixError(f"{path} is a folder; give a file name to write to")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        raise DomixError(f"cannot write {path}: {path if path.exists() else parent} is not writable; choose a place you can write to")


def clear(out: Path) -> None:
    """Remove what a previous run wrote (for --overwrite, once the new run's inputs checked out)."""
    for child in Path(out).iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
