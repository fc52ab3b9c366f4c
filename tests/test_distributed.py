"""Fine-tuning and instruction tuning over several processes (torchrun, gloo on CPU): data-parallel,
the same task model as one process makes."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from domix import atomic

from test_llm import instruction_data

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def launch(processes: int, args: list[str]) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable]
    done = subprocess.run(prefix + ["-m", "domix", *args], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(folder) -> dict[str, torch.Tensor]:
    found = sorted(folder.glob("*.safetensors"))
    assert found, folder
    return {k: v for f in found for k, v in load_file(str(f)).items()}


def same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-7), key


def test_two_processes_fine_tune_the_task_model_of_one(llama_store, task, tmp_path):
    """7 examples a step: an odd batch, so the slices differ in size, and 2 epochs with a short last batch."""
    common = ["finetune", "--modules", str(llama_store), "--task", str(task), "--epochs", "2", "--batch-size", "7",
              "--train-limit", "30", "--eval-limit", "16", "--lr", "5e-3", "--max-length", "32", "--dtype", "float64"]
    launch(1, common + ["--out", str(tmp_path / "one")])
    two = launch(2, common + ["--out", str(tmp_path / "two")])
    assert "process 1 of 2, data-parallel" in two.stdout
    one_record, two_record = (atomic.read_json(tmp_path / run / "result.json") for run in ("one", "two"))
    assert two_record["steps"] == one_record["steps"] == 10
    for (s1, l1), (s2, l2) in zip(one_record["loss_curve"], two_record["loss_curve"]):
        assert s1 == s2 and abs(l1 - l2) < 1e-5  # the logged loss is the whole batch's in both
    assert two_record["test"] == one_record["test"]
    same_weights(weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model"))
    assert atomic.read_json(tmp_path / "two" / "run.json")["status"] == "finished"


def test_two_processes_instruct_the_model_of_one(llama_store, tmp_path):
    data = instruction_data(tmp_path / "data.jsonl", 24, 0)
    common = ["instruct", "--modules", str(llama_store), "--train", str(data), "--epochs", "2", "--batch-size", "5",
              "--lr", "5e-3", "--max-length", "48", "--dtype", "float64"]
    launch(1, common + ["--out", str(tmp_path / "one")])
    two = launch(2, common + ["--out", str(tmp_path / "two")])
    assert "process 1 of 2, data-parallel" in two.stdout
    one_record, two_record = (atomic.read_json(tmp_path / run / "result.json") for run in ("one", "two"))
    assert abs(one_record["dev_loss"] - two_record["dev_loss"]) < 1e-6
    for (s1, l1), (s2, l2) in zip(one_record["loss_curve"], two_record["loss_curve"]):
        assert s1 == s2 and abs(l1 - l2) < 1e-5  # the logged loss is the whole batch's in both
    same_weights(weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model"))
