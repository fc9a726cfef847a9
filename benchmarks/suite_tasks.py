"""The memory suite's tasks and scores: task names, env-step budgets, episode-return bounds,
normalisation and the area under a training curve (``benchmarks/memory_suite.py`` runs them,
``benchmarks/suite_report.py`` reports them), and the ``LABEL=JSON`` fast-weights variants
the benchmarks take.

Sizing :data:`BUDGETS`: training throughput (env steps/s, updates included; 16 envs, hidden
128, one torch thread per run; 8k-16k-step runs) on the 2-core machine, measured while another
user's jobs also ran on it (load average 3-4), so an idle machine should be faster::

    one run at a time  RepeatPrevious  CatchBlind16  CartPole  Pendulum  MineSweeper  Concentration
    fastweights             2,430          3,040       2,440     2,870      2,580         2,100
    lstm / gru / irnn  4,970 / 3,440 / 6,040   5,630 / 5,020 / 7,330
    stock-lstm                890            990         740     1,640      1,290            —

    two runs at once (--workers 2)   CountRecall   HigherLower   NoisyCartPole
    fastweights                        1,130         1,130          1,130
    lstm / gru / irnn          2,290/1,600/2,740  2,230/1,580/2,760  1,780/1,200/2,120
    stock-lstm                      cannot build       400            680

At the two-at-once rates (fastweights 1,130, lstm 2,000, gru 1,400, irnn 2,400, stock-lstm
550 steps/s), one env step of all five models costs 4.3 ms of one worker (2.5 ms for the four
``RecurrentMemoryPolicy`` cores, on CountRecall, whose MultiDiscrete observations stock-lstm
cannot build on); the budgets sum to 4.5M steps over the 9 tasks with all five models and 0.8M
for CountRecall, so 3 seeds take 3 × (4.5M × 4.3 ms + 0.8M × 2.5 ms) ≈ 64,000 worker-seconds,
≈ 8.9 h with ``--workers 2`` (+ a few minutes of evaluations and worker start-up); on an idle
machine, nearer the one-at-a-time rates, about 5 h. stock-lstm is ~40% of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

POPGYM_TASKS = (
    "RepeatPreviousEasy", "RepeatFirstEasy", "CountRecallEasy", "HigherLowerEasy", "PositionOnlyCartPoleEasy",
    "NoisyPositionOnlyCartPoleEasy", "PositionOnlyPendulumEasy", "MineSweeperEasy", "ConcentrationEasy",
)  # fmt: skip
#: task name -> Gymnasium id.
TASKS: dict[str, str] = {**{name: f"popgym-{name}-v0" for name in POPGYM_TASKS}, "CatchBlind16": "CatchBlind16-v0"}
#: task name -> env steps per run (``--timesteps`` overrides, ``--budget-scale`` multiplies).
#: More for the longer-memory tasks; CountRecall (no stock-lstm run) gets the time saved. The module docstring has the measured throughputs and the overnight estimate.
BUDGETS: dict[str, int] = {
    "RepeatPreviousEasy": 600_000, "RepeatFirstEasy": 400_000, "CountRecallEasy": 800_000,
    "HigherLowerEasy": 400_000, "PositionOnlyCartPoleEasy": 500_000, "NoisyPositionOnlyCartPoleEasy": 500_000,
    "PositionOnlyPendulumEasy": 500_000, "MineSweeperEasy": 600_000, "ConcentrationEasy": 500_000,
    "CatchBlind16": 500_000,  # Figure 5's budget for CatchBlind16 (benchmarks/figure5.py)
}  # fmt: skip
# Episode-return bounds, from popgym 1.0.7's source (popgym/envs/*.py): the card games scale
# each step's reward so that an episode sums to [-1, 1]: RepeatPrevious ±1/(52-k) on the 52-k
# steps after the first k=4; RepeatFirst and CountRecall ±1/51 on 51 steps; HigherLower ±1/52
# (0 on a tie) on 51 steps; Concentration +1/26 per pair found, -1/104 per card of a wrong or
# repeated flip over 104 steps; MineSweeper +1/14 per safe cell (14 of 4x4 - 2 mines), -0.5/12
# per repeated cell, -0.5-1/14 on a mine; PositionOnlyPendulum maps Pendulum's [-16.27, 0] per
# step onto [-1, 1]/200 over 200 steps. The CartPoles give +1/200 per step survived (Gymnasium's
# CartPole pays 1.0 on every step, the falling one included; popgym's -1 is only for a 0 reward,
# i.e. stepping after the end), so a return is in (0, 1]. Catch: +1 caught, -1 missed.
RETURN_BOUNDS: dict[str, tuple[float, float]] = {
    **{name: (-1.0, 1.0) for name in TASKS},
    "PositionOnlyCartPoleEasy": (0.0, 1.0),
    "NoisyPositionOnlyCartPoleEasy": (0.0, 1.0),
}
MODELS = ("fastweights", "lstm", "gru", "irnn", "stock-lstm")
STOCK = "stock-lstm"
AUC_POINTS = 20
#: The ``--budget-scale`` values whose runs count for the report's target check: the full budgets and 20% of them.
TARGET_SCALES = (1.0, 0.2)


def normalise(task: str, returns: Any) -> np.ndarray:
    """Returns mapped to [0, 1] with the task's bounds: ``(R - min) / (max - min)``.

    :param task: Task name (a key of :data:`RETURN_BOUNDS`).
    :param returns: Episode returns (scalar or array).
    """
    low, high = RETURN_BOUNDS[task]
    return (np.asarray(returns, dtype=float) - low) / (high - low)


def interpolate_curve(steps: Sequence[float], values: Sequence[float], budget: float, points: int) -> np.ndarray:
    """A curve on the grid ``budget/points, 2*budget/points, ..., budget`` (held constant beyond its ends).

    :param steps: Env steps of the curve's points (increasing).
    :param values: Curve values.
    :param budget: The run's env-step budget.
    :param points: Grid size.
    :return: ``[points]`` values, all NaN for an empty curve.
    """
    if len(steps) == 0:
        return np.full(points, np.nan)
    grid = np.linspace(budget / points, budget, points)
    return np.interp(grid, np.asarray(steps, float), np.asarray(values, float))


def area_under_curve(task: str, steps: Sequence[float], returns: Sequence[float], budget: float) -> float:
    """Mean of the normalised training curve on a fixed :data:`AUC_POINTS`-point grid over the budget.

    :param task: Task name (for the normalisation).
    :param steps: Env steps at each rollout end.
    :param returns: Mean raw episode return in each rollout.
    :param budget: The run's env-step budget.
    """
    return float(np.mean(interpolate_curve(steps, normalise(task, returns), budget, AUC_POINTS)))


def budget(task: str, scale: float = 1.0) -> int:
    """The task's env-step budget times ``scale`` (at least one step).

    :param task: Task name (a key of :data:`BUDGETS`).
    :param scale: ``--budget-scale``.
    """
    return max(round(BUDGETS[task] * scale), 1)


#: A variant label: the letters a run folder and a table cell take.
LABEL = re.compile(r"[A-Za-z0-9_.+-]+")


def parse_variant(text: str, flag: str = "--fast-variant") -> tuple[str, dict[str, Any]]:
    """``LABEL=JSON`` -> (``fastweights[LABEL]``, memory_kwargs), checked as ``TrainConfig`` checks them.

    A key ``"policy"`` holds the variant's other ``RecurrentMemoryPolicy`` options, e.g.
    ``sep={"policy": {"critic": "separate"}}``; they are checked when the model is built.

    :param text: A ``--fast-variant`` value, e.g. ``eta2={"fast_share": 2.0}`` (also
        ``benchmarks/fast_weights_diagnostics.py --variant`` and ``bench_agent.py --fast-variant``).
    :param flag: The flag the value came with, for the error message.
    :raises ValueError: One line naming the value and what is accepted.
    """
    label, sep, raw = text.partition("=")
    if not sep or not LABEL.fullmatch(label):
        raise ValueError(f"bad {flag} {text!r}; expected LABEL=JSON with LABEL of letters, digits, _.+-")
    return _variant("fastweights", label, raw, text, flag)


def _variant(memory: str, label: str, raw: str, text: str, flag: str) -> tuple[str, dict[str, Any]]:
    """``(<memory>[label], options)`` from a variant's JSON ``raw``, its options checked for
    ``memory``; errors name the value as given (``text``) and its ``flag``."""
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad {flag} {text!r}: invalid JSON ({error})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"bad {flag} {text!r}: the JSON must be an object of {memory} options")
    from fw_agents.config_checks import check_memory_kwargs

    if not isinstance(kwargs.get("policy", {}), dict):
        raise ValueError(f"bad {flag} {text!r}: \"policy\" must be an object of policy options")
    try:
        check_memory_kwargs(memory, {k: v for k, v in kwargs.items() if k != "policy"}, hidden_size=4)
    except ValueError as error:
        raise ValueError(f"bad {flag} {text!r}: {error}") from None
    return f"{memory}[{label}]", kwargs


#: ``--variant``'s form: ``MEMORY[LABEL]=JSON``.
MODEL_VARIANT = re.compile(r"(?P<memory>[a-z]+)\[(?P<label>[^\]]*)\]=(?P<json>.*)", re.S)


def parse_model_variant(text: str, memories: Sequence[str], flag: str = "--variant") -> tuple[str, dict[str, Any]]:
    """``MEMORY[LABEL]=JSON`` -> (``MEMORY[LABEL]``, options): a :func:`parse_variant` of any core of
    ``memories``, e.g. ``gru[mlp64]={"policy": {"net_arch": [64]}}`` (the core's options beside
    ``"policy"``, checked for that core).

    :raises ValueError: One line naming the value and what is accepted.
    """
    found = MODEL_VARIANT.fullmatch(text)
    if found is None or found["memory"] not in memories or not LABEL.fullmatch(found["label"]):
        raise ValueError(f"bad {flag} {text!r}; expected MEMORY[LABEL]=JSON with MEMORY one of {', '.join(memories)} "
                         "and LABEL of letters, digits, _.+-")
    return _variant(found["memory"], found["label"], found["json"], text, flag)
