"""How the bridge starts and trains."""

from __future__ import annotations

from dataclasses import dataclass

from domix.errors import DomixError

P_INITS = ("average", "scaled_identity", "identity")  # or a number c for c·I


def parse_p_init(value: str | float) -> str | float:
    """A bridge init as :class:`BridgeConfig` takes it: one of ``P_INITS`` or a number (a numeric string converted)."""
    if isinstance(value, str) and value in P_INITS:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DomixError(f"unknown --p-init {value!r}; use {', '.join(P_INITS)} or a number") from None


@dataclass
class BridgeConfig:
    # P's initial value c·I: "scaled_identity" c = 1/Σr (the published default), "average" c = 1/N
    # (the N modules' mean update at full strength), "identity" c = 1 (their sum), or a number c.
    p_init: str | float = "scaled_identity"
    p_lr: float | None = None  # None: the same learning rate as B_cat and the head
    p_weight_decay: float = 0.01

    def initial_scale(self, total_rank: int, n_modules: int) -> float:
        if self.p_init == "scaled_identity":
            return 1.0 / total_rank
        if self.p_init == "average":
            return 1.0 / n_modules
        if self.p_init == "identity":
            return 1.0
        return parse_p_init(self.p_init)
