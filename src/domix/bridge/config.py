"""How the bridge starts and trains."""

from __future__ import annotations

from dataclasses import dataclass

from domix.errors import DomixError


@dataclass
class BridgeConfig:
    # P's initial value: "scaled_identity" (diag 1/Σr, the published default), "identity",
    # or a number c for c·I.
    p_init: str | float = "scaled_identity"
    p_lr: float | None = None  # None: the same learning rate as B_cat and the head
    p_weight_decay: float = 0.0

    def initial_scale(self, total_rank: int) -> float:
        if self.p_init == "scaled_identity":
            return 1.0 / total_rank
        if self.p_init == "identity":
            return 1.0
        try:
            return float(self.p_init)
        except (TypeError, ValueError):
            raise DomixError(f"unknown bridge init {self.p_init!r}; use scaled_identity, identity or a number") from None
