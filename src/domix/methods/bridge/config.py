"""How the bridge starts and trains."""

from __future__ import annotations

from dataclasses import dataclass

from domix.errors import DomixError
from domix.settings import check, setting

P_INITS = ("average", "scaled_identity", "identity")  # or a number c for c·I
P_BLOCKS = ("full", "diagonal")  # which entries of P act and train


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


@dataclass(kw_only=True)
class BridgeConfig:
    # P's initial value c·I: "scaled_identity" c = 1/Σr (the published default), "average" c = 1/N
    # (the N modules' mean update at full strength), "identity" c = 1 (their sum), or a number c.
    # domix's default: c = 1/Σr with P at 10x the run's rate and no weight decay on P (the published LLM code's
    # bridge), chosen on three dev sets over the published classification bridge (P at the run's rate, weight
    # decay 0.01: --recipe paper) and four others; the figures: docs/bridge-init.md
    p_init: str | float = setting("scaled_identity", "bridge init c·I: scaled_identity (c = 1/Σr, as published), average "
                                                     "(c = 1/N modules: their mean update), identity (c = 1), or a number c")
    # Learning rates of P and B_cat: None (the run's), a number, "Nx" (N times the run's), or "matched".
    # Adam moves a weight by about its learning rate a step, whatever the gradient's size, and P = c·I scales
    # the effect of every B step on the layer's output by c. "matched" undoes that: B at lr / c, P at lr · c.
    # With both matched, training is the same (up to Adam's epsilon and weight decay) as at P = I with the
    # modules' B scaled by c: a B step moves the output as much as a plain LoRA-FA's does, and c only sets how
    # strongly the modules' own updates act at the start (1/Σr: hardly; 1/N: their mean; 1: their sum).
    p_lr: str | float | None = setting("10x", "learning rate of the bridge, which trains in its own optimizer group as in the "
                                              "published code: a number, N times --lr as Nx, or matched (--lr times c); 10x is the "
                                              "published LLM code's, --recipe paper's is --lr")
    p_weight_decay: float = setting(0.0, "weight decay of the bridge (0: the published LLM code's; --recipe paper: 0.01)", float)
    b_lr: str | float | None = setting(None, "learning rate of B_cat: a number, Nx, or matched (--lr / c; default: --lr). With both "
                                             "matched a step moves the output as at P = I, so B learns as a plain LoRA-FA's does, whatever c")

    # "full": every entry of P trains, so each module's subspace may write through every module's B (the published
    # bridge); "diagonal": P block-diagonal over the modules, each module's columns feeding only its own B block
    p_blocks: str = setting("full", "which entries of the bridge train: full (every one, as published) or diagonal (each "
                                    "module's own block; the cross-module blocks stay zero)")

    def learning_rates(self, lr: float, total_rank: int, n_modules: int) -> tuple[float, float]:
        """P's and B_cat's learning rates in a run at ``lr``."""
        c = self.initial_scale(total_rank, n_modules)
        return resolve_lr(self.p_lr, lr, matched=lr * c), resolve_lr(self.b_lr, lr, matched=lr / c)

    def fast_bridge_warning(self, p_lr: float, total_rank: int, n_modules: int) -> str | None:
        """A warning line if each Adam step of P (about ``p_lr``) is at least half of P's initial entries c: on a tiny
        model at --lr 1e-2 the default's 10x (0.1 against 1/8) stalled the bridge in 2 of 3 seeds (docs/bridge-init.md)."""
        c = self.initial_scale(total_rank, n_modules)
        if p_lr < 0.5 * c:
            return None
        return (f"domix: warning: the bridge's learning rate {p_lr:.3g} moves P by about that much a step against initial entries "
                f"of {c:.3g} (c); at such steps the bridge may stop learning: lower --lr, or set --p-lr below {0.5 * c:.2g}")

    def initial_scale(self, total_rank: int, n_modules: int) -> float:
        if self.p_init == "scaled_identity":
            return 1.0 / total_rank
        if self.p_init == "average":
            return 1.0 / n_modules
        if self.p_init == "identity":
            return 1.0
        return parse_p_init(self.p_init)


@dataclass(kw_only=True)
class BridgeSettings(BridgeConfig):
    """The bridge's settings as a run takes them (domix finetune --method domix, domix_fixed or cat): the
    bridge's own, and a fresh block of ``new_rank`` before the modules (the published LLM code's)."""

    new_rank: int | None = setting(None, "domix and its bridge variants: a fresh LoRA block of this rank first in the bridge (A random "
                                         "and frozen, B zero and trained), as the published LLM code adds (it uses the modules' rank)", int)

    def check_settings(self, run) -> None:
        """Read the bridge's init and learning rates as the run takes them; refuse what cannot train (``run``: the
        run's settings)."""
        self.p_init = parse_p_init(self.p_init)
        self.p_lr, self.b_lr = parse_lr(self.p_lr, "--p-lr"), parse_lr(self.b_lr, "--b-lr")
        check([
            (self.p_weight_decay >= 0, "--p-weight-decay must be zero or positive"),
            (self.p_blocks in P_BLOCKS, f"--p-blocks must be {' or '.join(P_BLOCKS)}, not {self.p_blocks!r}"),
            (self.new_rank is None or self.new_rank >= 1, "--new-rank must be at least 1"),
        ])


