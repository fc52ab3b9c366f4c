"""MoDE (docs/methods.md §3): per-domain expert layers beside blocks of the frozen backbone, mixed by per-token gates."""

from domix.lazy import lazy_attributes
from domix.methods.mode.config import BlockPlan, plan_blocks

_MODEL = ("add_domain", "build_task_model", "expert_blocks", "gate_weights", "insert_blocks", "load_expert_store", "place",
          "recording_gates", "remove_blocks")
__all__ = ["BlockPlan", "ExpertBlock", "BlockSlot", "plan_blocks", *_MODEL]
__getattr__ = lazy_attributes(__name__, {"ExpertBlock": "domix.methods.mode.layer", "BlockSlot": "domix.methods.mode.layer",
                                         **{name: "domix.methods.mode.model" for name in _MODEL}})
