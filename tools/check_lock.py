"""Check that the running environment has the versions requirements.lock pins.

`make install` runs it after applying the lock as constraints: a package that a venv with
system site-packages would take from the system instead of the lock (another transformers, say)
is named here, with the fix. `--report` prints the differences without failing (for the drift
check, whose point is to run on other versions).

Usage: python tools/check_lock.py [--report] requirements.lock
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?\s*$")


def locked_versions(lock: Path) -> dict[str, str]:
    """Name -> pinned version for the lines of the lock whose markers hold on this interpreter."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker and not Marker(marker).evaluate():
            continue
        pins[canonicalize_name(name)] = version
    return pins


def differences(pins: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(name, locked, installed, location) for every locked package installed at another version."""
    out = []
    for name, version in sorted(pins.items()):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not needed by the extras this environment installed
        if dist.version != version:
            out.append((name, version, dist.version, str(dist.locate_file(""))))
    return out


def main(argv: list[str]) -> int:
    report = "--report" in argv
    paths = [a for a in argv if a != "--report"]
    if len(paths) != 1:
        print("usage: python tools/check_lock.py [--report] requirements.lock", file=sys.stderr)
        return 2
    lock = Path(paths[0])
    if not lock.is_file():
        print(f"error: no lock file at {lock}; run `make lock` to create it", file=sys.stderr)
        return 2
    pins = locked_versions(lock)
    diff = differences(pins)
    if report:
        print(f"{len(diff)} of {len(pins)} locked packages differ from {lock}:")
        for name, locked, installed, _ in diff:
            print(f"  {name:28s} lock {locked:14s} here {installed}")
        return 0
    if diff:
        for name, locked, installed, where in diff:
            print(f"error: {name} {installed} (from {where}) is installed where {lock} locks {locked}; "
                  f"remove the venv and run `make install` again", file=sys.stderr)
        return 2
    print(f"{sys.executable}: every installed package matches {lock} ({len(pins)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
