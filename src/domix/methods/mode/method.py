"""MoDE stage 2 as a task method: every domain's experts in every block, per-token gates, the head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from domix.errors import DomixError
from domix.methods.base import WEIGHTS_FILE, Probe, TaskMethod
from domix.methods.mode.model import build_task_model, load_expert_store, place, rebuild_task_model, task_record, task_tensors
from domix.store import check_base


class MoDE(TaskMethod):
    def pieces(self, cfg) -> list:
        return load_expert_store(cfg.modules, cfg.domains)

    def check_base(self, pieces: list, fingerprint: str) -> None:
        check_base(pieces, fingerprint, "MoDE experts of domain")

    def build(self, model: nn.Module, head: list[str], pieces: list, cfg) -> tuple[nn.Module, list[dict]]:
        return model, build_task_model(model, head, pieces, cfg)

    def place(self, model: nn.Module, cfg) -> None:
        place(model, cfg.method_options.mode_device_map)  # experts on their own devices, if a map says so

    def record(self, model: nn.Module, pieces: list, cfg, probe: Probe | None = None) -> dict:
        if probe is None:  # domix instruct: no classification test set to read the gates on
            return task_record(model, pieces, cfg)
        return task_record(model, pieces, cfg, probe.rows, probe.pad_id, probe.device)

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(task_tensors(model, record["head"]), str(folder / WEIGHTS_FILE))

    def load(self, model: nn.Module, record: dict, folder: Path) -> nn.Module:
        from safetensors.torch import load_file

        rebuild_task_model(model, record, load_file(str(folder / WEIGHTS_FILE)), folder)
        return model

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        raise DomixError("a MoDE task model cannot be exported as a plain transformers model: its blocks add expert layers "
                         "beside the backbone's and mix them per token, which no plain model of the base's architecture holds; "
                         "use the task model folder itself (domix evaluate, or: from domix.finetuning.model import load_task_model)")
