"""requirements.lock and tools/check_lock.py: the pins are read with their markers, and a package
installed at another version than the lock's is found (as a system package shadowing the lock would be)."""

import importlib.util
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_lock", ROOT / "tools" / "check_lock.py")
check_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_lock)

SAMPLE = """# a header
numpy==2.4.6 ; python_full_version < '9.0' \\
    --hash=sha256:aaaa
numpy==9.9.9 ; python_full_version >= '9.0' \\
    --hash=sha256:bbbb
pytest==1.2.3 \\
    --hash=sha256:cccc
    # via domix
jsfetch==1.0 ; sys_platform == 'emscripten' \\
    --hash=sha256:dddd
Typing_Extensions==4.0
"""


def test_pins_are_read_with_their_markers(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(SAMPLE)
    assert check_lock.locked_versions(lock) == {"numpy": "2.4.6", "pytest": "1.2.3", "typing-extensions": "4.0"}


def test_a_package_at_another_version_is_named_and_a_missing_one_is_not():
    installed = metadata.version("pytest")
    assert check_lock.differences({"pytest": installed, "no-such-package-here": "1.0"}) == []
    (diff,) = check_lock.differences({"pytest": "0.0.1"})
    assert diff[:3] == ("pytest", "0.0.1", installed)


def test_the_command_refuses_a_mismatch_in_one_line_with_the_fix(tmp_path, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text("pytest==0.0.1 \\\n    --hash=sha256:cccc\n")
    assert check_lock.main([str(lock)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: pytest {metadata.version('pytest')} (from ") and "run `make install` again" in line
    assert check_lock.main(["--report", str(lock)]) == 0
    assert check_lock.main([str(tmp_path / "missing.lock")]) == 2


def test_the_lock_pins_the_stack_but_not_torch():
    pins = check_lock.locked_versions(ROOT / "requirements.lock")
    assert {"transformers", "peft", "accelerate", "safetensors", "pytest"} <= set(pins) and "torch" not in pins


@pytest.mark.skipif(os.environ.get("DOMIX_DRIFT_CHECK") == "1", reason="the drift check runs on newer releases on purpose")
def test_this_environment_has_the_locked_versions():
    diff = check_lock.differences(check_lock.locked_versions(ROOT / "requirements.lock"))
    assert diff == [], f"installed packages differ from requirements.lock (run the suite with `make test`): {diff}"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_lock_names_no_path_of_one_machine():
    """`make lock` works anywhere: the torch wheel folder is an optional variable (TORCH_WHEELS), not a path."""
    def planned(*variables: str) -> str:
        return subprocess.run(["make", "-n", "lock", *variables], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    anywhere = planned()
    assert "--find-links" not in anywhere and "/opt/" not in anywhere
    assert "--no-emit-package nvidia-cublas" in anywhere and 'echo "torch==2.13.0" ' in anywhere  # the index's torch, its CUDA deps unlocked
    here = planned("TORCH_WHEELS=/some/wheels")
    assert "--find-links /some/wheels" in here and 'echo "torch==2.13.0+cpu" ' in here
