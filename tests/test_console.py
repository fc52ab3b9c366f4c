"""Quiet by default: third-party load reports and progress bars are silenced unless --verbose; what domix
adds to a model (a head) is said once in its own words."""

import os
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DOMIX_VERBOSE": ""}


def _finetune(tiny_llama, task, out, *flags):
    command = [sys.executable, "-m", "domix", *flags, "finetune", "--model", str(tiny_llama), "--task", str(task),
               "--method", "head", "--epochs", "1", "--max-length", "16", "--train-limit", "8", "--eval-limit", "4", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_load_reports_only_with_verbose(tiny_llama, task, tmp_path):
    quiet = _finetune(tiny_llama, task, tmp_path / "quiet")
    assert "LOAD REPORT" not in quiet and "MISSING" not in quiet
    assert quiet.count("domix: added a classification head for 3 labels (score.weight 3x32), randomly initialised") == 1
    loud = _finetune(tiny_llama, task, tmp_path / "loud", "--verbose")
    assert "LOAD REPORT" in loud and "score.weight" in loud
