"""The one spec of the fast-weights core's options: name, unit, accepted range, defaults, flag,
help and search space of each, in :data:`FAST_WEIGHTS_OPTIONS`.

Everything else is generated from it: :class:`~fw_agents.memory.FastWeightsRNN`'s defaults and
checks, the agents' defaults (``fw_agents.policies.DEFAULT_MEMORY_KWARGS``), ``train_agent.py``'s
flags (``fw_agents.train_cli.CORE_FLAGS``), the supervised commands' options
(``fw_agents.tasks.cli.FastWeightsOptions``), the search spaces (``fw_agents.search``,
``fw_agents.zoo``) and the table of docs/fast_weights_defaults.md (``python -m
fw_agents.memory.options`` prints it).

**Two names for η, one per unit.** ``fast_lr`` is always the paper's absolute η of Eq. 1;
``fast_share`` is always η as the fast memory's share of the drive, the write scaled by
``(1-λ)/H`` (paper η = ``fast_share·(1-λ)/H``). A core takes at most one of them.
Pure Python: importing it pulls no torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fw_agents.validation import check_bool, check_float, check_int

#: The two names of η, one per unit; a core, a config or a flag set takes at most one.
ETA_NAMES = ("fast_lr", "fast_share")
#: The option of the legacy (format 1) files that chose η's unit: True read ``fast_lr`` as a share.
LEGACY_UNIT_KEY = "normalize"
#: ``FastWeightsRNN``'s ``fast_lr`` default before ``fast_share`` existed (the paper's η, 0.5).
LEGACY_FAST_LR_DEFAULT = 0.5
#: Former ``mode`` names and the mode that runs them now: both were the chunked scan at a fixed
#: chunk size (``"matrix"`` 1, ``"attention"`` the whole call), same numbers as ``"scan"``.
LEGACY_MODES = {"matrix": "scan", "attention": "scan"}


@dataclass(frozen=True)
class SearchSpace:
    """How a search draws an option: ``"log"`` (log-uniform float in ``[low, high]``),
    ``"uniform"`` (uniform float) or ``"int"`` (uniform integer, both ends included)."""

    kind: str
    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw the option ``name`` for an Optuna ``trial``."""
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_float(name, self.low, self.high, log=self.kind == "log")

    def contains(self, value: Any) -> bool:
        return self.low <= value <= self.high

    def text(self) -> str:
        if self.kind == "int":
            return f"{{{', '.join(str(v) for v in range(int(self.low), int(self.high) + 1))}}}"
        return f"{'log-uniform' if self.kind == 'log' else 'uniform'} in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class CoreOption:
    """One option of the fast-weights core.

    :param name: Its keyword (``FastWeightsRNN``, ``memory_kwargs``, supervised commands' fields).
    :param kind: ``float``, ``int`` or ``bool``.
    :param symbol: The paper's symbol (η, λ, S, s), for messages and help.
    :param unit: What a value of it measures.
    :param low: Smallest accepted value (None: unbounded; ignored for ``bool``).
    :param high: Largest accepted value (None: unbounded).
    :param low_inclusive: ``low`` itself accepted.
    :param high_inclusive: ``high`` itself accepted.
    :param default: ``FastWeightsRNN``'s default (None: not set unless asked).
    :param agent_default: The agents' default (None: not set by them).
    :param flag: ``train_agent.py``'s flag (a ``bool`` one also gets ``--no-...``).
    :param help: One line for ``--help`` and the docs.
    :param search: How the searches draw it (None: not searched).
    """

    name: str
    kind: type
    symbol: str
    unit: str
    low: float | None
    high: float | None
    low_inclusive: bool
    high_inclusive: bool
    default: Any
    agent_default: Any
    flag: str
    help: str
    search: SearchSpace | None = None

    @property
    def label(self) -> str:
        """``fast_lr (η)``: the name messages give."""
        return f"{self.name} ({self.symbol})" if self.symbol else self.name

    def check(self, value: Any) -> Any:
        """``value`` in its plain Python type if accepted; ``ValueError`` naming the range otherwise."""
        if self.kind is bool:
            return check_bool(self.name, value)
        if self.kind is int:
            return check_int(self.label, value, self.low, self.high)
        return check_float(self.label, value, self.low, self.high,
                           low_inclusive=self.low_inclusive, high_inclusive=self.high_inclusive)  # fmt: skip

    def range_text(self) -> str:
        """``(0, 1)``, ``>= 1``, ``True/False``: the accepted values, as the checks word them."""
        if self.kind is bool:
            return "True/False"
        if self.high is None:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        return f"{'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}{']' if self.high_inclusive else ')'}"


# Beyond 1e6 the write overflows float32 activations at once (paper η: 0.5; a share: ~1).
FAST_WEIGHTS_OPTIONS: tuple[CoreOption, ...] = (
    CoreOption("fast_lr", float, "η", "the paper's absolute η (Eq. 1: A = λA + η h hᵀ)", 0.0, 1e6, False, True,
               default=0.5, agent_default=None, flag="--fast-lr",
               help="η of the paper's Eq. 1, absolute (not with fast_share)",
               search=SearchSpace("log", 1e-4, 0.1)),
    CoreOption("fast_share", float, "η share", "η as the fast memory's share of the drive: the write scaled by "
               "(1-λ)/H, paper η = fast_share·(1-λ)/H", 0.0, 1e6, False, True, default=None, agent_default=0.5,
               flag="--fast-share",
               help="η as the fast memory's share of the drive, ‖A‖ <= fast_share at any width (not with fast_lr)",
               search=SearchSpace("log", 0.05, 5.0)),
    CoreOption("decay", float, "λ", "share of the fast memory kept at each step", 0.0, 1.0, False, False,
               default=0.95, agent_default=0.95, flag="--decay", help="λ, the share of the fast memory kept at each step",
               search=SearchSpace("uniform", 0.5, 0.99)),
    CoreOption("inner_steps", int, "S", "inner-loop steps per time step (Eq. 5)", 1, None, True, False,
               default=1, agent_default=1, flag="--inner-steps", help="S, inner-loop steps per time step",
               search=SearchSpace("int", 1, 2)),
    CoreOption("identity_scale", float, "s", "scale of the slow weights at initialisation, W = s·I", 0.0, None,
               False, False, default=0.05, agent_default=0.05, flag="--identity-scale",
               help="s, the slow recurrent weights' initial scale (W = s·I; paper 0.05)"),
    CoreOption("bias_correction", bool, "", "read A at full strength from an episode's first step (A / (1-λ^n))",
               None, None, False, False, default=False, agent_default=True, flag="--bias-correction",
               help="divide A by its filled share 1-λ^n, as Adam's moments (early steps at full strength)"),
    CoreOption("relative_slow_weights", bool, "", "train W as s·W̃ from W̃ = I: a step of the optimizer moves W "
               "by its scale s, not by 1", None, None, False, False, default=False, agent_default=None,
               flag="--relative-slow-weights",
               help="train the slow weights relative to their scale s (W = s·W̃, W̃ = I at first)"),
    CoreOption("time_scales", int, "", "fast-memory time scales: the rows of A in that many groups, the g-th "
               "decaying with λ_g = 1 - (1-λ)·2^g (horizons 1/(1-λ), half that, ...); λ_g must stay > 0", 1, 8, True, True,
               default=1, agent_default=None, flag="--time-scales",
               help="several fast-memory time scales at once, horizons halving from 1/(1-λ) (1: the paper's one λ)"),
    CoreOption("rms_norm", bool, "", "normalise Eq. 5's inner loop by the root mean square alone (RMS norm), "
               "not layer norm", None, None, False, False, default=False, agent_default=None, flag="--rms-norm",
               help="RMS norm in the inner loop instead of layer norm (no mean removed: relu(RMS(h)) keeps h ≥ 0)"),
    CoreOption("update_gate", bool, "", "a GRU-style update gate around the inner loop: h(t) = (1-g) h(t-1) + g h_S, "
               "g = sigmoid(G_h h(t-1) + G_x x(t) + b); the reference loop runs it", None, None, False, False,
               default=False, agent_default=None, flag="--update-gate",
               help="gate the new state as a GRU does: keep or replace each unit per step (reference loop, slow)"),
    CoreOption("learned_memory", bool, "", "train λ and η (in its unit) by gradient from the given values: "
               "λ = sigmoid(gρ), η = exp(gκ), g = memory_lr_scale; the reference loop runs it", None, None, False,
               False, default=False, agent_default=None, flag="--learned-memory",
               help="train the fast memory's λ and η by gradient, from the given values (reference loop, slow)"),
    CoreOption("memory_lr_scale", float, "g", "the learned λ and η's learning rate relative to the other "
               "parameters' (their parametrisation's gain)", 0.0, 1e4, False, True, default=1.0, agent_default=None,
               flag="--memory-lr-scale", help="learning-rate multiplier for the learned λ and η (with --learned-memory)"),
)  # fmt: skip
#: The spec by name.
OPTIONS: dict[str, CoreOption] = {option.name: option for option in FAST_WEIGHTS_OPTIONS}


def agent_defaults() -> dict[str, Any]:
    """The agents' defaults: every option's ``agent_default`` that is set."""
    return {o.name: o.agent_default for o in FAST_WEIGHTS_OPTIONS if o.agent_default is not None}


def core_defaults() -> dict[str, Any]:
    """``FastWeightsRNN``'s defaults: every option's ``default`` that is set (η as ``fast_lr``)."""
    return {o.name: o.default for o in FAST_WEIGHTS_OPTIONS if o.default is not None}


def resolve_eta(fast_lr: Any, fast_share: Any) -> tuple[str, float]:
    """Which η a core was given and its checked value: ``("fast_lr", η)`` or ``("fast_share", share)``.

    :raises ValueError: Both set (naming both), or the one set out of its range.
    """
    if fast_lr is not None and fast_share is not None:
        raise ValueError(
            f"fast_lr={fast_lr!r} (the paper's η) and fast_share={fast_share!r} (η as a share of the drive) "
            "both set; give one"
        )
    if fast_share is not None:
        return "fast_share", OPTIONS["fast_share"].check(fast_share)
    return "fast_lr", OPTIONS["fast_lr"].check(OPTIONS["fast_lr"].default if fast_lr is None else fast_lr)


def merge_options(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` over it, key by key, η by unit: an η in ``overrides`` (either
    name) replaces ``base``'s η whatever its name (``fast_lr=0.01`` over the agents' defaults
    drops their ``fast_share``)."""
    base = dict(base)
    if any(name in overrides for name in ETA_NAMES):
        base = {key: value for key, value in base.items() if key not in ETA_NAMES}
    return {**base, **overrides}


def translate_legacy_mode(mode: Any) -> Any:
    """A former ``mode`` name (``"matrix"``, ``"attention"``) as the mode that runs it now
    (``"scan"``), quietly; any other value as it is (the core checks it)."""
    return LEGACY_MODES.get(mode, mode) if isinstance(mode, str) else mode


def translate_legacy_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Fast-weights options as saved before ``fast_share`` (checkpoint format 1, old ``config.json``
    and zoo YAML) in today's names: ``normalize=True, fast_lr=x`` -> ``fast_share=x`` (``x`` the
    old default 0.5 when absent), ``normalize=False, fast_lr=x`` -> ``fast_lr=x``; a former
    ``mode`` name as today's (:func:`translate_legacy_mode`). Other options are returned as
    they are (a copy).

    :raises ValueError: ``normalize`` not a bool.
    """
    kwargs = dict(kwargs)
    if "mode" in kwargs:
        kwargs["mode"] = translate_legacy_mode(kwargs["mode"])
    if LEGACY_UNIT_KEY not in kwargs:
        return kwargs
    if check_bool(LEGACY_UNIT_KEY, kwargs.pop(LEGACY_UNIT_KEY)) and "fast_share" not in kwargs:
        kwargs["fast_share"] = kwargs.pop("fast_lr", LEGACY_FAST_LR_DEFAULT)
    return kwargs


def suggest_options(trial: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """One Optuna draw of the options ``names`` (each by its spec's :class:`SearchSpace`)."""
    return {name: OPTIONS[name].search.suggest(trial, name) for name in names}


def searched_names(eta: str) -> tuple[str, ...]:
    """The options a search draws, η as ``eta`` (``"fast_share"`` or the paper's ``"fast_lr"``)."""
    return tuple(o.name for o in FAST_WEIGHTS_OPTIONS if o.search is not None and (o.name not in ETA_NAMES or o.name == eta))


def markdown_table() -> str:
    """The options as a markdown table: name, unit, range, defaults, search, help."""
    rows = ["| option | unit | accepted | core default | agent default | flag | searched | help |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for o in FAST_WEIGHTS_OPTIONS:
        flag = f"`{o.flag}`" + (f" / `--no-{o.flag[2:]}`" if o.kind is bool else "")
        cells = (f"`{o.name}`" + (f" ({o.symbol})" if o.symbol else ""), o.unit, o.range_text(), _cell(o.default),
                 _cell(o.agent_default), flag, o.search.text() if o.search else "-", o.help)  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(value: Any) -> str:
    return "-" if value is None else f"`{value}`"


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
