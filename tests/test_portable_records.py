"""Records that reproduce on any machine: a project's runs name their base model and inputs as the user gave them
(relative to where domix ran), never by the absolute path of one machine, and a store or run folder copied with its
project to another place still loads there."""

import json
import shutil

import torch

from domix.finetuning.config import FinetuneConfig
from domix.finetuning.model import load_task_model
from domix.finetuning.run import finetune
from domix.pretraining.config import PretrainConfig
from domix.pretraining.run import pretrain


def written_text(root) -> str:
    return "\n".join(p.read_text(errors="ignore") for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".txt", ".md"))


def test_a_projects_records_hold_no_machine_path_and_load_after_a_move(tmp_path, tiny_llama, corpora, task, monkeypatch):
    project = tmp_path / "machine-a" / "project"
    shutil.copytree(tiny_llama, project / "models" / "tiny")
    shutil.copytree(task, project / "tasks" / "topics")
    for name, path in corpora.items():
        (project / "corpora").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, project / "corpora" / f"{name}.txt")
    monkeypatch.chdir(project)
    pretrain(PretrainConfig(model=str(project / "models" / "tiny"),  # given absolute: recorded relative to the project
                            domains={"food": "corpora/food.txt", "bio": "corpora/bio.txt"}, out="runs/store", steps=2,
                            batch_size=4, seq_len=16, lora_rank=2, heldout_max_blocks=2))
    finetune(FinetuneConfig(task="tasks/topics", modules="runs/store", out="runs/task", epochs=1, lr=5e-3, max_length=16))
    text = written_text(project / "runs")
    assert str(tmp_path) not in text and "machine-a" not in text  # no path of this machine in any record
    manifest = json.loads((project / "runs" / "store" / "food" / "domix_manifest.json").read_text())
    assert manifest["base_model"]["name"] == "models/tiny"
    adapter = json.loads((project / "runs" / "store" / "food" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "models/tiny"
    _, _, record = load_task_model(project / "runs" / "task" / "model")

    # the whole project copied to another machine (another path): the store and the task model load there as they are
    moved = tmp_path / "machine-b" / "elsewhere"
    shutil.copytree(project, moved)
    shutil.rmtree(project)
    monkeypatch.chdir(moved)
    model, _, again = load_task_model("runs/task/model")
    assert again["base_model"] == record["base_model"] and next(model.parameters()).dtype == torch.float32
    finetune(FinetuneConfig(task="tasks/topics", modules="runs/store", out="runs/task2", epochs=1, lr=5e-3, max_length=16))
    assert "machine-a" not in written_text(moved / "runs")
