"""The GPU check script runs end to end at its dry-run size on the CPU and writes its one JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_dry_run_runs_every_section(tiny_llama, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "DOMIX_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--shape", str(tiny_llama),
                           "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and set(report["sections"]) == {"dap", "instruct", "finetune", "rate"}
    sections = {name: s["result"] for name, s in report["sections"].items()}
    assert set(sections["dap"]["rows"]) == {"fused", "sequential", "concurrent", "ncl", "fused-ckpt"}
    assert all(r["tokens_per_s"] > 0 and r["peak_mb"] > 0 for r in sections["dap"]["rows"].values())
    assert set(sections["instruct"]["rows"]) == {"domix", "lora", "dora"}
    assert [r["method"] for r in sections["finetune"]["rows"]] == ["domix", "lora"]
    assert set(sections["rate"]["rows"]) == {"dap", "finetune", "instruct"}
    assert all(0 < r["share_of_matmul_rate"] for r in sections["rate"]["rows"].values())
