"""Memory benchmark suite: {models} × {tasks} × {seeds} at an equal env-step budget per task.

Every model trains with the same PPO hyper-parameters (``fw_agents.agent.TrainConfig``'s
defaults) and ``--hidden-size`` units, with each policy's **own defaults** otherwise (no
per-task tuning): ``fastweights``, ``lstm``, ``gru``, ``irnn`` are ``FastRecurrentPPO`` with
``RecurrentMemoryPolicy(memory=...)`` (no ``memory_kwargs``); ``stock-lstm`` is sb3-contrib's
``RecurrentPPO("MlpLstmPolicy")``. ``--fast-variant LABEL=JSON`` adds a fast-weights row
``fastweights[LABEL]`` with those ``memory_kwargs`` (a sweep with the same machinery).
Tasks: the POPGym "Easy" memory tasks (``pip install -e '.[bench]'`` for popgym) and CatchBlind16.

Per run: the training curve (mean return of the episodes finished in each rollout), a
deterministic evaluation over ``--eval-episodes`` episodes on a separate env (seed + 10,000)
and the training wall time, in ``<out>/runs/<task>/<model>/seed<k>.json`` (written atomically;
an existing JSON is skipped, so an interrupted suite resumes; ``--retry-errors`` reruns the
runs that raised). Report: ``<out>/memory_suite.md`` (normalised final return, area under the
normalised training curve, wall time) and ``<out>/memory_suite.png`` (training curves)::

    python benchmarks/memory_suite.py                      # the whole suite, overnight on 2 cores
    python benchmarks/memory_suite.py --workers 2 --tasks RepeatFirstEasy CatchBlind16 --seeds 0
    python benchmarks/memory_suite.py --quick              # smoke run, well under a minute
    python benchmarks/memory_suite.py --models fastweights --fast-variant 'eta2={"fast_share": 2.0}'
    python benchmarks/memory_suite.py --report-only        # rebuild the report from <out>/runs

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

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import re
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fw_agents.cli import OneLineArgumentParser, run_cli
from fw_agents.files import atomic_path, write_text_atomically
from fw_agents.validation import check_float, check_int

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
QUICK: dict[str, Any] = dict(tasks=["RepeatFirstEasy", "CatchBlind16"], models=["fastweights", STOCK], seeds=[0],
                             timesteps=4096)  # fmt: skip
AUC_POINTS = 20
EVAL_SEED_OFFSET = 10_000
LABEL = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass
class Job:
    """One (model, task, seed) run and where its JSON goes."""

    task: str
    model: str
    seed: int
    timesteps: int
    path: str
    hidden_size: int = 128
    eval_episodes: int = 100
    memory_kwargs: dict[str, Any] | None = None  # None: the policy's defaults
    command: str = ""
    policy_options: dict[str, Any] | None = None  # a variant's other policy_kwargs (critic, net_arch)


def one_line(error: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return " ".join(f"{type(error).__name__}: {error}".split())


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


# --------------------------------------------------------------------------- one run (worker side)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*render_mode.*")  # make_vec_env asks popgym for rgb_array
    warnings.filterwarnings("ignore", message=".*share an object.*")  # popgym reuses its info dicts


def _init_pool_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    _init_worker()


def make_task_env(task: str, n_envs: int, seed: int) -> Any:
    """The task's ``VecEnv`` with episode statistics (batched numpy Catch, else ``make_vec_env``).

    :param task: Task name.
    :param n_envs: Number of environments.
    :param seed: Seed of the first one.
    """
    from stable_baselines3.common.env_util import make_vec_env

    from fw_agents.agent import make_env

    if task in POPGYM_TASKS:
        import popgym  # noqa: F401  (registers the ids)

        return make_vec_env(_popgym_env, n_envs=n_envs, seed=seed, env_kwargs=dict(env_id=TASKS[task]))
    return make_env(TASKS[task], n_envs, seed)


def _popgym_env(env_id: str) -> Any:
    """A POPGym game as its authors run it: the ones marked ``obs_requires_prev_action``
    (MineSweeper, Concentration: the observation answers the previous action) get POPGym's
    ``PreviousAction`` (the action joins the observation) and ``Flatten`` (the resulting ``Tuple``
    becomes one flat one-hot ``Box``, since SB3 accepts no ``Tuple``); the others are left as
    ``gym.make`` gives them.

    :param env_id: The game's Gymnasium id.
    """
    import gymnasium as gym

    env = gym.make(env_id)
    if not getattr(env.unwrapped, "obs_requires_prev_action", False):
        return env
    from popgym.wrappers import Flatten, PreviousAction

    return Flatten(PreviousAction(env.unwrapped), flatten_action=False)


def ppo_settings() -> dict[str, Any]:
    """The PPO hyper-parameters every model shares: ``TrainConfig``'s defaults."""
    from fw_agents.agent import TrainConfig

    defaults = TrainConfig()
    keys = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "n_envs")
    return {key: getattr(defaults, key) for key in keys}


def policy_kwargs(job: Job) -> dict[str, Any]:
    """The job's ``policy_kwargs``: the width, the core and, for a variant only, its ``memory_kwargs``.

    :param job: The run.
    """
    if job.model == STOCK:
        return dict(lstm_hidden_size=job.hidden_size)
    kwargs: dict[str, Any] = dict(memory=job.model.split("[")[0], hidden_size=job.hidden_size)
    if job.memory_kwargs is not None:
        kwargs["memory_kwargs"] = job.memory_kwargs
    kwargs.update(job.policy_options or {})
    return kwargs


def build_job_model(job: Job, env: Any) -> Any:
    """The job's model: stock ``RecurrentPPO("MlpLstmPolicy")`` or ``FastRecurrentPPO`` + memory policy.

    :param job: The run.
    :param env: Its training env.
    """
    from sb3_contrib import RecurrentPPO

    from fw_agents.algorithms import FastRecurrentPPO
    from fw_agents.policies import RecurrentMemoryPolicy

    ppo = {k: v for k, v in ppo_settings().items() if k != "n_envs"}
    common = dict(policy_kwargs=policy_kwargs(job), seed=job.seed, device="cpu", verbose=0, **ppo)
    if job.model == STOCK:
        return RecurrentPPO("MlpLstmPolicy", env, **common)
    return FastRecurrentPPO(RecurrentMemoryPolicy, env, **common)


def _rollout_returns_callback() -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class RolloutReturns(BaseCallback):
        """Records (num_timesteps, mean return of the episodes finished in the rollout) at each rollout end."""

        def __init__(self) -> None:
            super().__init__()
            self.steps: list[int] = []
            self.returns: list[float] = []
            self._finished: list[float] = []

        def _on_step(self) -> bool:
            self._finished += [float(info["episode"]["r"]) for info in self.locals["infos"] if "episode" in info]
            return True

        def _on_rollout_end(self) -> None:
            if self._finished:
                self.steps.append(int(self.num_timesteps))
                self.returns.append(float(np.mean(self._finished)))
                self._finished = []

    return RolloutReturns()


def run_job(job: Job) -> dict[str, Any]:
    """Train, evaluate and time one run; write and return its record (``status``: ok, cannot build, error).

    :param job: The run.
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    _init_worker()
    record: dict[str, Any] = {**asdict(job), "ppo": ppo_settings()}
    del record["path"]
    envs: list[Any] = []
    try:
        envs.append(make_task_env(job.task, record["ppo"]["n_envs"], job.seed))
        envs.append(make_task_env(job.task, min(job.eval_episodes, 50), job.seed + EVAL_SEED_OFFSET))
        try:
            model = build_job_model(job, envs[0])
        except Exception as error:  # e.g. stock MlpLstmPolicy on MultiDiscrete observations
            record.update(status="cannot build", error=one_line(error))
        else:
            curve = _rollout_returns_callback()
            start = time.perf_counter()
            model.learn(job.timesteps, callback=curve)
            wall = time.perf_counter() - start
            returns, _ = evaluate_policy(
                model, envs[1], n_eval_episodes=job.eval_episodes, deterministic=True, return_episode_rewards=True
            )
            final = float(np.mean(returns))
            record.update(
                status="ok", wall_time_s=wall, trained_steps=int(model.num_timesteps),
                core_options=getattr(model.policy, "memory_kwargs", None),  # the defaults, resolved
                curve_steps=curve.steps, curve_returns=curve.returns, eval_returns=[float(r) for r in returns],
                final_return=final, final_normalised=float(normalise(job.task, final)),
                auc=area_under_curve(job.task, curve.steps, curve.returns, job.timesteps),
            )  # fmt: skip
    except Exception as error:
        record.update(status="error", error=one_line(error))
    finally:
        for env in envs:
            env.close()
    write_text_atomically(job.path, json.dumps(record, indent=1, default=str) + "\n")
    return record


# --------------------------------------------------------------------------- report


def load_runs(out: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every run record under ``<out>/runs``, by (task, model), sorted by seed.

    :param out: The suite's output folder.
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob("*/*/seed*.json")):
        record = json.loads(path.read_text())
        runs.setdefault((path.parts[-3], path.parts[-2]), []).append(record)
    return {key: sorted(records, key=lambda r: r["seed"]) for key, records in runs.items()}


def ordered(names: set[str] | Sequence[str], reference: Sequence[str]) -> list[str]:
    """``names`` in ``reference``'s order, the others after them sorted (variants after the base models)."""
    return [n for n in reference if n in names] + sorted(set(names) - set(reference))


def run_value(record: dict[str, Any], metric: str) -> float:
    """A finished run's ``final`` normalised return, ``auc`` or training ``wall`` time (s).

    :param record: A record with status ok.
    :param metric: ``final``, ``auc`` or ``wall``.
    """
    if metric == "final":
        return float(normalise(record["task"], record["final_return"]))
    if metric == "auc":
        return area_under_curve(record["task"], record["curve_steps"], record["curve_returns"], record["timesteps"])
    return float(record["wall_time_s"])


METRICS = (
    ("final", "Final normalised return (deterministic evaluation, mean ± std over seeds; best in bold)", max),
    ("auc", f"Area under the normalised training curve ({AUC_POINTS}-point grid over the budget; best in bold)", max),
    ("wall", "Mean training wall time per run (env steps/s in brackets; fastest in bold)", min),
)


def _cell(records: list[dict[str, Any]], metric: str) -> tuple[float | None, str]:
    """(mean or None, text) of one table cell."""
    if not records:
        return None, "—"
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None, "cannot build" if any(r["status"] == "cannot build" for r in records) else "error"
    values = np.array([run_value(r, metric) for r in ok])
    values = values[~np.isnan(values)]  # an AUC is NaN when no training episode finished
    if not len(values):
        return None, "no episode finished"
    mean = float(values.mean())
    if metric == "wall":
        rate = np.mean([r["trained_steps"] / r["wall_time_s"] for r in ok])
        text = f"{_seconds(mean)} ({rate:,.0f} steps/s)"
    else:
        text = f"{mean:.3f} ± {float(values.std()):.3f}"
    if len(values) < len(records):
        text += f" ({len(values)} of {len(records)} runs)"
    return mean, text


def _seconds(value: float) -> str:
    return f"{value:,.0f} s" if value >= 100 else f"{value:.1f} s"


def _bold_best(means: list[float | None], texts: list[str], best: Any) -> list[str]:
    present = [m for m in means if m is not None]
    if not present:
        return texts
    top = best(present)
    return [f"**{t}**" if m is not None and math.isclose(m, top) else t for m, t in zip(means, texts)]


def build_report(
    runs: dict[tuple[str, str], list[dict[str, Any]]], tasks: Sequence[str], models: Sequence[str], command: str
) -> str:
    """The markdown report: three task × model tables (final return, AUC, wall time) with a mean row.

    :param runs: Records by (task, model), from :func:`load_runs`.
    :param tasks: Rows, in order.
    :param models: Columns, in order.
    :param command: The command line, printed at the top.
    """
    shown = [r for t in tasks for m in models for r in runs.get((t, m), [])]
    seeds = sorted({r["seed"] for r in shown})
    made_by = sorted({r["command"] for r in shown if r.get("command") and r["command"] != command})
    complete = [t for t in tasks if all(any(r["status"] == "ok" for r in runs.get((t, m), [])) for m in models)]
    left_out = [t for t in tasks if t not in complete]
    lines = [
        "# Memory suite", "", f"Command: `{command}`", *(f"Runs made by: `{c}`" for c in made_by), "",
        f"Seeds: {', '.join(map(str, seeds)) or 'none'}. Returns are normalised to [0, 1] with each task's "
        "episode-return bounds (`RETURN_BOUNDS` in benchmarks/memory_suite.py).", "",
        f"The **mean** row averages only the tasks where every model has results: {len(complete)} of {len(tasks)}"
        + (f" (left out: {', '.join(left_out)})." if left_out else "."),
    ]  # fmt: skip
    for metric, title, best in METRICS:
        lines += ["", f"## {title}", "", f"| task | steps | {' | '.join(models)} |", "|---" * (len(models) + 2) + "|"]
        for task in tasks:
            cells = [_cell(runs.get((task, m), []), metric) for m in models]
            budgets = sorted({r["timesteps"] for m in models for r in runs.get((task, m), [])})
            steps = "—" if not budgets else "–".join(f"{b:,}" for b in sorted({budgets[0], budgets[-1]}))
            texts = _bold_best([c[0] for c in cells], [c[1] for c in cells], best)
            lines.append(f"| {task} | {steps} | {' | '.join(texts)} |")
        means: list[float | None] = []
        for model in models:
            values = [_cell(runs[(t, model)], metric)[0] for t in complete]
            means.append(float(np.mean(values)) if complete and None not in values else None)
        texts = [("—" if m is None else _seconds(m) if metric == "wall" else f"{m:.3f}") for m in means]
        lines.append(f"| **mean** | | {' | '.join(_bold_best(means, texts, best))} |")
    if "fastweights" in models and STOCK in models:
        lines += ["", *target_check(runs, tasks)]
    errors = [f"- {t} / {m} / seed {r['seed']}: {r['status']}: {r.get('error', '')}" for t in tasks for m in models
              for r in runs.get((t, m), []) if r["status"] != "ok"]  # fmt: skip
    if errors:
        lines += ["", "## Runs without results", "", *errors]
    return "\n".join(lines) + "\n"


def _final_values(records: list[dict[str, Any]]) -> np.ndarray:
    return np.array([run_value(r, "final") for r in records if r["status"] == "ok"])


def target_check(runs: dict[tuple[str, str], list[dict[str, Any]]], tasks: Sequence[str]) -> list[str]:
    """Markdown lines: the suite's target for fast weights with their defaults, task by task:
    a final normalised return no lower than the stock LSTM's mean minus one standard deviation
    over seeds, and at least the stock LSTM's on the mean over the tasks both ran.

    :param runs: Records by (task, model).
    :param tasks: Tasks, in order.
    """
    lines = ["## Target: fast weights (defaults) against the stock LSTM", "",
             "| task | fastweights | stock-lstm − 1 std | met |", "|---|---|---|---|"]  # fmt: skip
    fast_means, stock_means = [], []
    for task in tasks:
        fast, stock = _final_values(runs.get((task, "fastweights"), [])), _final_values(runs.get((task, STOCK), []))
        if not len(fast):
            continue
        if not len(stock):
            lines.append(f"| {task} | {fast.mean():.3f} | stock cannot run | — |")
            continue
        bar = stock.mean() - stock.std()
        lines.append(f"| {task} | {fast.mean():.3f} | {bar:.3f} | {'yes' if fast.mean() >= bar else '**no**'} |")
        fast_means.append(fast.mean())
        stock_means.append(stock.mean())
    if fast_means:
        met = "yes" if np.mean(fast_means) >= np.mean(stock_means) else "**no**"
        lines.append(f"| mean of {len(fast_means)} tasks | {np.mean(fast_means):.3f} | "
                     f"{np.mean(stock_means):.3f} (stock's mean) | {met} |")  # fmt: skip
    return lines


def plot_curves(
    runs: dict[tuple[str, str], list[dict[str, Any]]], tasks: Sequence[str], models: Sequence[str], path: Path
) -> None:
    """One subplot per task: each model's normalised training curve, mean ± std over seeds; written atomically.

    :param runs: Records by (task, model).
    :param tasks: Subplots, in order.
    :param models: Lines, in order.
    :param path: The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(tasks), 4) or 1
    rows = max(math.ceil(len(tasks) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, task in zip(axes.flat, tasks):
        for model in models:
            ok = [r for r in runs.get((task, model), []) if r["status"] == "ok" and r["curve_steps"]]
            if not ok:
                continue
            budget = max(r["timesteps"] for r in ok)
            grid = np.linspace(budget / 50, budget, 50)
            curves = np.stack(
                [interpolate_curve(r["curve_steps"], normalise(task, r["curve_returns"]), budget, 50) for r in ok]
            )
            mean, std = curves.mean(axis=0), curves.std(axis=0)
            ax.plot(grid, mean, color=colours[model], label=model)
            ax.fill_between(grid, mean - std, mean + std, color=colours[model], alpha=0.2)
        ax.set(title=task, xlabel="env steps", ylabel="normalised return", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[m], label=m) for m in models]
    fig.legend(handles=handles, loc="lower center", ncol=len(models), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)


def write_report(out: Path, command: str, tasks: Sequence[str] | None = None, models: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None) -> str:  # fmt: skip
    """Write ``memory_suite.md`` and ``memory_suite.png`` in ``out`` from its runs; return the markdown.

    :param out: The suite's output folder.
    :param command: The command line, for the report's header.
    :param tasks: Rows (default: every task with runs).
    :param models: Columns (default: every model with runs).
    :param seeds: Seeds to include (default: all).
    """
    runs = load_runs(out)
    if seeds is not None:
        runs = {key: [r for r in records if r["seed"] in seeds] for key, records in runs.items()}
    tasks = ordered(set(tasks) if tasks is not None else {t for t, _ in runs}, list(TASKS))
    models = ordered(set(models) if models is not None else {m for _, m in runs}, MODELS)
    if not runs:
        raise ValueError(f"no runs in {out / 'runs'}; run the suite first")
    text = build_report(runs, tasks, models, command)
    write_text_atomically(out / "memory_suite.md", text)
    plot_curves(runs, tasks, models, out / "memory_suite.png")
    return text


# --------------------------------------------------------------------------- command line


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL=JSON`` -> (``fastweights[LABEL]``, memory_kwargs), checked as ``TrainConfig`` checks them.

    A key ``"policy"`` holds the variant's other ``RecurrentMemoryPolicy`` options, e.g.
    ``sep={"policy": {"critic": "separate"}}``; they are checked when the model is built.

    :param text: A ``--fast-variant`` value, e.g. ``eta2={"fast_share": 2.0}``.
    """
    label, sep, raw = text.partition("=")
    if not sep or not LABEL.fullmatch(label):
        raise ValueError(f"bad --fast-variant {text!r}; expected LABEL=JSON with LABEL of letters, digits, _.+-")
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad --fast-variant {text!r}: invalid JSON ({error})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"bad --fast-variant {text!r}: the JSON must be an object of fast-weights options")
    from fw_agents.agent import check_memory_kwargs

    if not isinstance(kwargs.get("policy", {}), dict):
        raise ValueError(f"bad --fast-variant {text!r}: \"policy\" must be an object of policy options")
    try:
        check_memory_kwargs("fastweights", {k: v for k, v in kwargs.items() if k != "policy"}, hidden_size=4)
    except ValueError as error:
        raise ValueError(f"bad --fast-variant {text!r}: {error}") from None
    return f"fastweights[{label}]", kwargs


def resolve_tasks(names: Sequence[str]) -> list[str]:
    """Task names (a Gymnasium id of a task is accepted too); ``ValueError`` naming a bad one."""
    by_id = {env_id: name for name, env_id in TASKS.items()}
    tasks = []
    for name in names:
        if name not in TASKS and name not in by_id:
            raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
        tasks.append(by_id.get(name, name))
    return list(dict.fromkeys(tasks))


def resolve_models(names: Sequence[str] | None, variants: dict[str, dict[str, Any]]) -> list[str]:
    """Model names (default: all five), plus the ``--fast-variant`` rows; ``ValueError`` naming a bad one."""
    accepted = [*MODELS, *variants]
    for name in names or []:
        if name not in accepted:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(accepted)}")
    return list(dict.fromkeys([*(names or MODELS), *variants]))


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", help=f"default: all ({', '.join(TASKS)})")
    p.add_argument("--models", nargs="+", help=f"default: all ({', '.join(MODELS)})")
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    p.add_argument("--fast-variant", action="append", default=[], metavar="LABEL=JSON",
                   help="extra fast-weights model fastweights[LABEL] with these memory_kwargs (repeatable)")  # fmt: skip
    p.add_argument("--timesteps", type=int, help="env steps per run for every task (default: the BUDGETS table)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one process and one thread each")
    p.add_argument("--out", help="default: runs/memory_suite (runs/memory_suite_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 tasks, 2 models, 1 seed, 4k steps")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <out>/runs")
    p.add_argument("--retry-errors", action="store_true", help="rerun runs recorded with status error")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("timesteps", "hidden_size", "eval_episodes", "workers"):
        if getattr(args, name) is not None:
            check_int(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    check_float("--budget-scale", args.budget_scale, 0)
    for seed in args.seeds or []:
        check_int("--seeds", seed, 0)


def make_jobs(args: argparse.Namespace, tasks: list[str], models: list[str], variants: dict[str, dict[str, Any]],
              out: Path, command: str) -> list[Job]:  # fmt: skip
    """The runs still to do, seed by seed (so a partial suite has whole seeds); finished ones are skipped."""
    jobs = []
    for seed in args.seeds:
        for task in tasks:
            budget = args.timesteps or max(round(BUDGETS[task] * args.budget_scale), 1)
            for model in models:
                path = out / "runs" / task / model / f"seed{seed}.json"
                if path.exists():
                    old = json.loads(path.read_text())
                    if not (args.retry_errors and old["status"] == "error"):
                        if old["timesteps"] != budget:
                            print(f"note: keeping {path} ({old['timesteps']:,} steps, not {budget:,})")
                        continue
                variant = dict(variants.get(model) or {})
                policy_options = variant.pop("policy", None)
                jobs.append(Job(task, model, seed, budget, str(path), args.hidden_size, args.eval_episodes,
                                variant if model in variants else None, command, policy_options))  # fmt: skip
    return jobs


def run_jobs(jobs: list[Job], workers: int) -> int:
    """Run the jobs in ``workers`` spawned processes, printing a line per finished run.

    :return: The number of runs whose worker died (no record written).
    """
    start, lost = time.perf_counter(), 0
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=context, initializer=_init_pool_worker
    )
    try:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[future]
            try:
                record = future.result()
                status = record["status"]
                detail = (f"final {record['final_normalised']:.3f}, auc {record['auc']:.3f}, "
                          f"{record['wall_time_s']:.0f} s" if status == "ok" else record["error"])  # fmt: skip
            except Exception as error:  # the worker died (e.g. out of memory)
                lost, status, detail = lost + 1, "lost", one_line(error)
            elapsed = (time.perf_counter() - start) / 60
            print(f"[{done}/{len(jobs)} {elapsed:.1f} min] {job.task} {job.model} seed {job.seed}: {status}: {detail}",
                  flush=True)  # fmt: skip
    except KeyboardInterrupt:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before 3.14
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return lost


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite (or rebuild its report) and write the report; returns the exit status."""
    args = build_parser().parse_args(argv)
    _check(args)
    command = shlex.join(["python", "benchmarks/memory_suite.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out or ("runs/memory_suite_quick" if args.quick else "runs/memory_suite"))
    variants = dict(parse_variant(text) for text in args.fast_variant)
    if len(variants) < len(args.fast_variant):
        raise ValueError("--fast-variant labels must be distinct")
    if args.quick:
        for key, value in QUICK.items():  # what the command line does not set
            setattr(args, key, getattr(args, key) or value)
    if args.report_only:
        tasks = resolve_tasks(args.tasks) if args.tasks else None
        models = resolve_models(args.models, variants) if args.models or variants else None
        print(write_report(out, command, tasks, models, args.seeds), end="")
        return 0
    tasks, models = resolve_tasks(args.tasks or list(TASKS)), resolve_models(args.models, variants)
    args.seeds = list(dict.fromkeys(args.seeds or [0, 1, 2]))
    if any(task in POPGYM_TASKS for task in tasks):
        try:
            import popgym  # noqa: F401
        except ImportError:
            raise ValueError("popgym is not installed; pip install -e '.[bench]'") from None
    jobs = make_jobs(args, tasks, models, variants, out, command)
    print(f"{len(jobs)} runs to do ({len(tasks)} tasks × {len(models)} models × {len(args.seeds)} seeds, "
          f"finished ones skipped), {args.workers} workers, into {out}", flush=True)  # fmt: skip
    try:
        lost = run_jobs(jobs, args.workers) if jobs else 0
    except KeyboardInterrupt:
        print("interrupted: the finished runs are saved; run the same command again to resume", file=sys.stderr)
        return 130
    print(write_report(out, command, tasks, models, args.seeds), end="")
    print(f"\nreport: {out / 'memory_suite.md'}, {out / 'memory_suite.png'}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
