"""DoMIX stage 2: domain modules concatenated with a trainable bridge (docs/methods.md §1)."""

from domix.bridge.config import BridgeConfig
from domix.bridge.layer import BridgedLinear
from domix.bridge.model import compose, fold

__all__ = ["BridgeConfig", "BridgedLinear", "compose", "fold"]
