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


def parse_lr(value: str | float | None, flag: str) -> str | float | None:
    """A bridge part's learning rate as the settings take it: None (the run's), a number, ``"Nx"`` (N times
    the run's) or ``"matched"`` (see :class:`BridgeConfig`); a numeric string is converted. Refuses anything else."""
    if value is None or value == "matched":
        return value
    text = str(value).strip()
    try:
        number = float(text[:-1]) if text.endswith("x") else float(text)
    except ValueError:
        number = float("nan")
    if not number > 0:
        raise DomixError(f"{flag} must be a positive learning rate, N times the run's as 'Nx' (e.g. 10x), or 'matched'; got {value!r}")
    return text if text.endswith("x") else number


def resolve_lr(value: str | float | None, lr: float, matched: float | None = None) -> float:
    """The learning rate ``value`` (as :func:`parse_lr` returns it) stands for in a run at ``lr``."""
    if value is None:
        return lr
    if value == "matched":
        return matched
    if isinstance(value, str):
        return float(value[:-1]) * lr
    return value


@dataclass
class BridgeConfig:
    # P's initial value c·I: "scaled_identity" c = 1/Σr (the published default), "average" c = 1/N
    # (the N modules' mean update at full strength), "identity" c = 1 (their sum), or a number c.
    # domix's default is the published bridge (c = 1/Σr, P and B at the run's rate); the dev figures: docs/bridge-init.md
    p_init: str | float = "scaled_identity"
    # Learning rates of P and B_cat: None (the run's), a number, "Nx" (N times the run's), or "matched".
    # Adam moves a weight by about its learning rate a step, whatever the gradient's size, and P = c·I scales
    # the effect of every B step on the layer's output by c. "matched" undoes that: B at lr / c, P at lr · c.
    # With both matched, training is the same (up to Adam's epsilon and weight decay) as at P = I with the
    # modules' B scaled by c: a B step moves the output as much as a plain LoRA-FA's does, and c only sets how
    # strongly the modules' own updates act at the start (1/Σr: hardly; 1/N: their mean; 1: their sum).
    p_lr: str | float | None = None
    p_weight_decay: float = 0.01
    b_lr: str | float | None = None

    def learning_rates(self, lr: float, total_rank: int, n_modules: int) -> tuple[float, float]:
        """P's and B_cat's learning rates in a run at ``lr``."""
        c = self.initial_scale(total_rank, n_modules)
        return resolve_lr(self.p_lr, lr, matched=lr * c), resolve_lr(self.b_lr, lr, matched=lr / c)

    def initial_scale(self, total_rank: int, n_modules: int) -> float:
        if self.p_init == "scaled_identity":
            return 1.0 / total_rank
        if self.p_init == "average":
            return 1.0 / n_modules
        if self.p_init == "identity":
            return 1.0
        return parse_p_init(self.p_init)
