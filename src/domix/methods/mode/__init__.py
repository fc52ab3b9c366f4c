"""MoDE (docs/methods.md §3): per-domain expert layers beside blocks of the frozen backbone, mixed by per-token gates."""

from domix.methods.mode.config import BlockPlan, plan_blocks
from domix.methods.mode.layer import ExpertBlock, PassThrough
from domix.methods.mode.model import (
    add_domain, build_task_model, expert_blocks, gate_weights, insert_blocks, load_expert_store, place, recording_gates,
    remove_blocks,
)

__all__ = ["BlockPlan", "ExpertBlock", "PassThrough", "add_domain", "build_task_model", "expert_blocks", "gate_weights",
           "insert_blocks", "load_expert_store", "place", "plan_blocks", "recording_gates", "remove_blocks"]
