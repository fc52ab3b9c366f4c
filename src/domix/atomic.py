"""Atomic writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_FULL_WORDS = ("No space left", "File too large", "Disk quota exceeded")


def _no_room_left(err: Exception, written: Path) -> bool:
    """Whether ``err``, raised while writing into ``written`` (a file or a folder), came from a full disk or a
    file-size limit. Some writers (torch's zip writer) drop the OS error, so the largest file written is
    grown a little: with no room left, that fails the same way."""
    if getattr(err, "errno", None) in _FULL or any(w in str(err) for w in _FULL_WORDS):
        return True
    files = [written] if written.is_file() else [f for f in written.rglob("*") if f.is_file()] if written.is_dir() else []
    if not files:
        return False
    try:
        with open(max(files, key=lambda f: f.stat().st_size), "ab") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as probe:
        return probe.errno in _FULL
    return False


@contextmanager
def _no_room_is_one_error(path: Path, written: Path) -> Iterator[None]:
    """A full disk (or a file-size limit) while writing ``path`` (into ``written``, a temporary file or folder):
    one clear error instead of the writer's own (OSError, torch's RuntimeError, safetensors' error). The caller
    removes the temporary, so the old file stays whole and a rerun resumes from it."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - writers wrap the OS error in their own types
        if not _no_room_left(err, written):
            raise
        from domix.errors import DomixError

        raise DomixError(f"no room left to write {path} ({err.__class__.__name__}); nothing was half-written: free "
                         "disk space and rerun the same command, which goes on from the last checkpoint") from None


def _replace_from_temp(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _no_room_is_one_error(path, Path(tmp)):
            write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    _replace_from_temp(Path(path), lambda tmp: tmp.write_text(text))


def copy_file(source: Path, target: Path) -> None:
    _replace_from_temp(Path(target), lambda tmp: shutil.copyfile(source, tmp))


def torch_save(path: Path, obj: Any) -> None:
    _replace_from_temp(Path(path), lambda tmp: torch.save(obj, tmp))


def replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder under a temporary name with ``fill``, then swap it in for ``target``.

    The swap is two renames (old aside, new in place), so ``target`` is always either the
    complete old folder or the complete new one; a crash in between leaves the old one
    under ``.<name>.old`` where :func:`recover_dir` puts it back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes folders private
    try:
        with _no_room_is_one_error(target, tmp):
            fill(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def recover_dir(target: Path) -> None:
    """Undo a swap that :func:`replace_dir` did not finish."""
    old = Path(target).with_name(f".{Path(target).name}.old")
    if old.exists():
        if Path(target).exists():
            shutil.rmtree(old)
        else:
            os.replace(old, target)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        from domix.errors import DomixError

        raise DomixError(f"{path} is not valid JSON ({err.msg}); it was damaged or written by something else") from None
