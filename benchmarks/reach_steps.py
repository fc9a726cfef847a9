"""When each model first reaches a return: the env steps to a threshold, from the memory suite's runs.

Reads the run records a ``benchmarks/memory_suite.py`` command wrote (``<out>/runs/<task>/<model>/seed<k>.json``)
and prints, per task and model, over seeds: the final return of the deterministic evaluation (raw,
not normalised), and for each ``--thresholds`` value the env steps at which the training curve
first reaches it, the curve being the mean return of the episodes finished in each rollout
smoothed by a running mean over ``--window`` rollouts (a single lucky rollout does not count).
A seed that never reaches a threshold counts as the run's budget in the mean (``>`` marks it)::

    python benchmarks/memory_suite.py --tasks CatchBlind16 --models fastweights lstm gru irnn \\
        --seeds 0 1 2 3 --timesteps 1000000 --workers 2 --out runs/cb16_1M
    python benchmarks/reach_steps.py runs/cb16_1M --thresholds 0.5 0.8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite_report import load_runs  # noqa: E402


def first_reach(steps: list[int], returns: list[float], threshold: float, window: int) -> int | None:
    """The first env step where the running mean of ``window`` rollouts' returns is ``>= threshold``.

    :param steps: Env steps at the end of each rollout.
    :param returns: Mean return of the episodes finished in each rollout (NaN: none finished).
    :param threshold: The return to reach.
    :param window: Rollouts in the running mean (the first ``window - 1`` points are not judged).
    :return: The step, or None if never reached.
    """
    values = np.asarray(returns, dtype=float)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    for end in range(window, len(values) + 1):
        chunk = values[end - window : end]
        chunk = chunk[~np.isnan(chunk)]
        if chunk.size and chunk.mean() >= threshold:
            return int(steps[end - 1])
    return None


def report(out: Path, thresholds: list[float], window: int) -> str:
    """The markdown table of :func:`first_reach` over the runs under ``out``."""
    header = ["task", "model", "seeds", "final return (mean ± std)"]
    header += [f"steps to {t:g} (mean; per seed)" for t in thresholds]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (task, model), records in sorted(load_runs(out).items()):
        finals = np.array([float(r["final_return"]) for r in records])
        row = [task, model, str(len(records)), f"{finals.mean():.3f} ± {finals.std():.3f}"]
        for threshold in thresholds:
            reached = [first_reach(r["curve_steps"], r["curve_returns"], threshold, window) for r in records]
            budgets = [int(r["trained_steps"]) for r in records]
            counted = [b if s is None else s for s, b in zip(reached, budgets)]
            seeds = ", ".join(f">{b // 1000}k" if s is None else f"{s // 1000}k" for s, b in zip(reached, budgets))
            never = any(s is None for s in reached)
            row.append(f"{'>' if never else ''}{np.mean(counted) / 1000:.0f}k ({seeds})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the memory suite's --out folder")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--window", type=int, default=10, help="rollouts in the running mean (default: 10)")
    args = parser.parse_args(argv)
    if not (args.out / "runs").is_dir():
        parser.error(f"{args.out}: no runs/ folder (give a memory suite's --out)")
    if args.window < 1:
        parser.error(f"--window must be >= 1, got {args.window}")
    print(report(args.out, args.thresholds, args.window))
    return 0


if __name__ == "__main__":
    sys.exit(main())
