"""MixDA stage 2 as a task method: a gate over the frozen domain adapters, a task adapter, the head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from domix.errors import DomixError
from domix.methods.base import WEIGHTS_FILE, Probe, TaskMethod
from domix.methods.mixda.model import build_mixda, load_adapters, load_task_tensors, task_record, task_tensors
from domix.store import check_base


class MixDA(TaskMethod):
    def pieces(self, cfg) -> list:
        return load_adapters(cfg.modules, cfg.domains)

    def check_base(self, pieces: list, fingerprint: str) -> None:
        check_base(pieces, fingerprint, "MixDA adapters of domain")

    def build(self, model: nn.Module, head: list[str], pieces: list, cfg) -> tuple[nn.Module, list[dict]]:
        return model, build_mixda(model, head, pieces, cfg)

    def record(self, model: nn.Module, pieces: list, cfg, probe: Probe | None = None) -> dict:
        return task_record(model, pieces, cfg, probe.rows, probe.pad_id, probe.device)

    def save(self, model: nn.Module, record: dict, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(task_tensors(model, record["head"]), str(folder / WEIGHTS_FILE))

    def load(self, model: nn.Module, record: dict, folder: Path) -> nn.Module:
        from safetensors.torch import load_file

        load_task_tensors(model, record, load_file(str(folder / WEIGHTS_FILE)))
        return model

    def plain(self, model: nn.Module, record: dict) -> nn.Module:
        raise DomixError("a MixDA task model cannot be exported as a plain transformers model: its gates weigh the domain "
                         "adapters per input, which no fixed weight can hold; use the task model folder itself "
                         "(domix evaluate, or: from domix.finetuning.model import load_task_model)")
