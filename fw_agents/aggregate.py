"""Scores aggregated over runs and tasks with ``rliable`` (Agarwal et al., 2021, "Deep RL at the
edge of the statistical precipice"): the interquartile mean (IQM, the mean of the middle 50% of
all runs × tasks scores) with a stratified-bootstrap confidence interval, and performance
profiles (the fraction of runs scoring above each threshold τ).

``rliable`` is in the ``bench`` extra (``pip install -e '.[bench]'``) and is imported only when a
function here runs, so the benchmarks' ``--help`` works without it. The bootstraps are seeded:
the same scores give the same intervals.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fw_agents.runs.files import atomic_path

#: Bootstrap replications and seed of :func:`iqm_intervals` unless told otherwise.
DEFAULT_REPS = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95


def import_rliable() -> tuple[Any, Any, Any]:
    """``(rliable.library, rliable.metrics, rliable.plot_utils)``.

    rliable's bootstrap comes from ``arch.bootstrap``; ``import arch`` also imports
    ``arch.univariate``, which arch 7.2 cannot import under pandas 3 (pandas changed
    ``deprecate_kwarg``'s signature: ``TypeError ... 'new_arg_name'``; statsmodels/statsmodels#9614
    is the same break). The bootstrap itself does not use ``arch.univariate``, so on that error
    only, ``arch`` is registered as a bare package (its ``__init__`` skipped) and
    ``arch.bootstrap`` imported from it.
    """
    try:
        from rliable import library, metrics, plot_utils
    except ImportError:
        raise ValueError("rliable is not installed; pip install -e '.[bench]'") from None
    except TypeError as error:
        if "new_arg_name" not in str(error):
            raise
        spec = importlib.util.find_spec("arch")
        bare = types.ModuleType("arch")
        bare.__path__ = list(spec.submodule_search_locations or [])  # a package without its __init__
        sys.modules["arch"] = bare
        from rliable import library, metrics, plot_utils
    return library, metrics, plot_utils


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded for the block, then restored: rliable 1.2's
    ``StratifiedBootstrap.update_indices`` draws with ``np.random.choice`` and ignores its
    ``random_state``, so this is what makes its bootstraps reproducible."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _checked(name: str, scores: Any) -> np.ndarray:
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim != 2 or 0 in matrix.shape or not np.isfinite(matrix).all():
        raise ValueError(f"scores of {name!r} must be a non-empty finite [runs x tasks] matrix, got shape {matrix.shape}")
    return matrix


def iqm_intervals(
    scores: Mapping[str, Any], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
) -> dict[str, tuple[float, float, float]]:
    """Each key's IQM over all its runs × tasks and its 95% stratified-bootstrap interval
    (runs resampled within each task; ``rly.get_interval_estimates``, percentile method).

    :param scores: Name -> ``[runs x tasks]`` matrix (the same runs count on every task).
    :param reps: Bootstrap replications.
    :param seed: Seed of each key's bootstrap (every key starts from it, so a key's interval
        does not depend on the other keys).
    :return: Name -> ``(iqm, low, high)``.
    """
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"bootstrap reps must be an integer >= 1, got {reps!r}")
    rly, metrics, _ = import_rliable()
    estimates = {}
    for name, matrix in scores.items():
        with _seeded(seed):
            points, intervals = rly.get_interval_estimates(
                {name: _checked(name, matrix)}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps,
                confidence_interval_size=CONFIDENCE,
            )  # fmt: skip
        estimates[name] = (float(points[name][0]), float(intervals[name][0, 0]), float(intervals[name][1, 0]))
    return estimates


def interval_text(estimate: tuple[float, float, float]) -> str:
    """``IQM [low, high]`` with three decimals."""
    iqm, low, high = estimate
    return f"{iqm:.3f} [{low:.3f}, {high:.3f}]"


def iqm_cells(matrices: Sequence[Any], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED) -> list[str]:
    """The ``IQM [low, high]`` text of each ``[runs x tasks]`` matrix (a report's table cells).

    :param matrices: Score matrices.
    :param reps: Bootstrap replications.
    :param seed: Bootstrap seed.
    """
    estimates = iqm_intervals({str(i): m for i, m in enumerate(matrices)}, reps, seed)
    return [interval_text(estimates[str(i)]) for i in range(len(matrices))]


def save_performance_profile(
    scores: Mapping[str, Any], path: str | Path, colors: Mapping[str, Any] | None = None, reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED, xlabel: str = r"normalised score ($\tau$)", title: str = "",
) -> None:  # fmt: skip
    """Plot each key's score distribution (the fraction of its runs × tasks scores above τ, for
    τ in [0, 1]) with its 95% stratified-bootstrap band; written atomically.

    :param scores: Name -> ``[runs x tasks]`` matrix of scores in [0, 1].
    :param path: The PNG to write.
    :param colors: Name -> matplotlib colour (default: the C0, C1, ... cycle in key order).
    :param reps: Bootstrap replications.
    :param seed: Bootstrap seed.
    :param xlabel: The x-axis label.
    :param title: The plot's title.
    """
    rly, _, plot_utils = import_rliable()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = np.linspace(0.0, 1.0, 101)
    profiles, bands = {}, {}
    for name, matrix in scores.items():  # one seeded bootstrap per key, as in iqm_intervals
        with _seeded(seed):
            profile, band = rly.create_performance_profile({name: _checked(name, matrix)}, taus, reps=reps)
        profiles[name], bands[name] = profile[name], band[name]
    colors = dict(colors or {name: f"C{i % 10}" for i, name in enumerate(scores)})
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    try:
        plot_utils.plot_performance_profiles(
            profiles, taus, performance_profile_cis=bands, colors=colors, ax=ax, xlabel=xlabel,
            ylabel=r"fraction of runs with score $> \tau$", labelsize="medium", ticklabelsize="medium",
        )  # fmt: skip
        ax.legend(handles=[plt.Line2D([], [], color=colors[n], label=n) for n in profiles], frameon=False)
        if title:
            ax.set_title(title)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
