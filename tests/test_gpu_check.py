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
    assert report["dry_run"] and set(report["sections"]) == {"dap", "instruct", "instruct_pad", "finetune", "rate"}
    sections = {name: s["result"] for name, s in report["sections"].items()}
    assert set(sections["dap"]["rows"]) == {"fused", "sequential", "concurrent", "ncl", "fused-ckpt"}
    assert all(r["tokens_per_s"] > 0 and r["peak_mb"] > 0 for r in sections["dap"]["rows"].values())
    assert set(sections["instruct"]["rows"]) == {"domix", "lora", "dora"}
    assert all(r["step_s"] > 0 and r["first_pass_step_s"] > 0 for r in sections["instruct"]["rows"].values())
    assert set(sections["instruct_pad"]["rows"]) == {"domix", "dora"} and sections["instruct_pad"]["settings"]["pad_multiple"] == 64
    assert [r["method"] for r in sections["finetune"]["rows"]] == ["domix", "lora"]
    assert set(sections["rate"]["rows"]) == {"dap", "finetune", "instruct"}
    assert all(0 < r["share_of_matmul_rate"] for r in sections["rate"]["rows"].values())


def test_the_random_model_has_no_zero_embedding_row(tiny_llama, tmp_path):
    """transformers zeroes the padding token's embedding; on a random model of 30 layers that token's
    gradient then grows by 1/sqrt(eps) at every RMSNorm and overflows. The check's model must not."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import random_model

    shape = tmp_path / "shape"
    shutil.copytree(tiny_llama, shape)
    config = AutoConfig.from_pretrained(shape)
    config.pad_token_id = 1
    config.save_pretrained(shape)
    assert (AutoModelForCausalLM.from_config(config).get_input_embeddings().weight[1] == 0).all()  # what transformers does
    model = AutoModelForCausalLM.from_pretrained(random_model(shape, tmp_path / "model", tiny=True))
    weight = model.get_input_embeddings().weight
    assert not (weight == 0).all(dim=1).any()
    assert 0.5 * config.initializer_range < weight[1].std() < 2 * config.initializer_range
