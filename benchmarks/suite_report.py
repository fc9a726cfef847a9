"""The memory suite's report, from its run records (``<out>/runs/<task>/<model>/seed<k>.json``):
``memory_suite.md`` (per-task tables of the normalised final return, the area under the training
curve and the wall time; each model's interquartile mean over tasks × seeds with a 95%
stratified-bootstrap interval; the target check against the stock LSTM when the runs allow it),
``memory_suite.png`` (training curves) and ``memory_suite_profile.png`` (performance profiles).
The IQMs, intervals and profiles come from ``rliable`` through :mod:`fw_agents.aggregate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from suite_tasks import AUC_POINTS, MODELS, STOCK, TARGET_SCALES, TASKS, area_under_curve, budget, interpolate_curve, normalise

from fw_agents.aggregate import DEFAULT_REPS, DEFAULT_SEED, iqm_cells, save_performance_profile
from fw_agents.runs.files import atomic_path, write_text_atomically

Runs = dict[tuple[str, str], list[dict[str, Any]]]
#: Seeds each compared (task, model) cell needs before the report checks the target.
TARGET_MIN_SEEDS = 3
PROFILE_NAME = "memory_suite_profile.png"


def load_runs(out: Path) -> Runs:
    """Every run record under ``<out>/runs``, by (task, model), sorted by seed.

    :param out: The suite's output folder.
    """
    return group_runs(json.loads(path.read_text()) for path in sorted((out / "runs").glob("*/*/seed*.json")))


def group_runs(records: Iterable[dict[str, Any]]) -> Runs:
    """Run records by (task, model), sorted by seed.

    :param records: Run records (from the JSONs or the study).
    """
    runs: Runs = {}
    for record in records:
        runs.setdefault((record["task"], record["model"]), []).append(record)
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
    runs: Runs, tasks: Sequence[str], models: Sequence[str], command: str, reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
) -> str:  # fmt: skip
    """The markdown report: three task × model tables (final return, AUC, wall time) with a mean
    row, the models' IQMs (:func:`iqm_section`) and the target check (:func:`target_section`).

    :param runs: Records by (task, model), from :func:`load_runs`.
    :param tasks: Rows, in order.
    :param models: Columns, in order.
    :param command: The command line, printed at the top.
    :param reps: Bootstrap replications of the IQMs' intervals.
    :param seed: Bootstrap seed.
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
    lines += ["", *iqm_section(runs, tasks, models, reps, seed)]
    if "fastweights" in models and STOCK in models:
        lines += ["", *target_section(runs, tasks)]
    errors = [f"- {t} / {m} / seed {r['seed']}: {r['status']}: {r.get('error', '')}" for t in tasks for m in models
              for r in runs.get((t, m), []) if r["status"] != "ok"]  # fmt: skip
    if errors:
        lines += ["", "## Runs without results", "", *errors]
    return "\n".join(lines) + "\n"


def common_tasks(runs: Runs, tasks: Sequence[str], models: Sequence[str]) -> list[str]:
    """The tasks on which every model has at least one finished run."""
    return [t for t in tasks if all(any(r["status"] == "ok" for r in runs.get((t, m), [])) for m in models)]


def _values_by_seed(records: list[dict[str, Any]], metric: str) -> dict[int, float]:
    values = {r["seed"]: run_value(r, metric) for r in records if r["status"] == "ok"}
    return {seed: value for seed, value in values.items() if math.isfinite(value)}  # NaN AUC: no episode finished


def score_matrices(
    runs: Runs, tasks: Sequence[str], models: Sequence[str], metric: str
) -> tuple[dict[str, np.ndarray], list[int], list[str]]:
    """Each model's ``[seeds x tasks]`` matrix of ``metric`` on ``tasks``, over the seeds with a
    value in every (task, model) cell, as a stratified bootstrap needs (the same runs on every task).

    :param runs: Records by (task, model).
    :param tasks: Columns.
    :param models: The models compared (they share the seeds).
    :param metric: ``final`` or ``auc``.
    :return: (model -> matrix, empty when no seed is shared; the seeds; ``task / model / seed k``
        of each run with a value left out).
    """
    values = {(t, m): _values_by_seed(runs.get((t, m), []), metric) for t in tasks for m in models}
    seeds = sorted(set.intersection(*(set(v) for v in values.values()))) if values else []
    dropped = [f"{t} / {m} / seed {k}" for (t, m), v in values.items() for k in sorted(set(v) - set(seeds))]
    if not seeds:
        return {}, [], dropped
    return {m: np.array([[values[(t, m)][k] for t in tasks] for k in seeds]) for m in models}, seeds, dropped


def _iqm_texts(matrices: dict[str, dict[str, np.ndarray]], models: Sequence[str], reps: int, seed: int) -> dict[str, list[str]]:
    """model -> ``IQM [low, high]`` of its final and auc matrices (``—`` where it has none)."""
    keys = [(m, metric) for m in models for metric in ("final", "auc") if m in matrices[metric]]
    cells = dict(zip(keys, iqm_cells([matrices[metric][m] for m, metric in keys], reps, seed)))
    return {m: [cells.get((m, metric), "—") for metric in ("final", "auc")] for m in models}


def iqm_section(runs: Runs, tasks: Sequence[str], models: Sequence[str], reps: int, seed: int) -> list[str]:
    """Markdown lines: each model's IQM over tasks × seeds of the normalised final return and AUC
    with 95% stratified-bootstrap intervals, over the tasks every model ran and over its own tasks,
    and the performance profile's link.

    :param runs: Records by (task, model).
    :param tasks: Tasks, in order.
    :param models: Models, in order.
    :param reps: Bootstrap replications.
    :param seed: Bootstrap seed.
    """
    lines = ["## Interquartile mean over tasks × seeds (rliable)", "",
             "IQM (the mean of the middle 50% of all runs × tasks scores) with its 95% stratified-bootstrap "
             f"confidence interval (seeds resampled within each task; {reps:,} replications, seed {seed}). A matrix "
             "holds the seeds that have results on every task it covers.", ""]  # fmt: skip
    common = common_tasks(runs, tasks, models)
    left_out = [t for t in tasks if t not in common]
    scored = {metric: score_matrices(runs, common, models, metric) for metric in ("final", "auc")}
    dropped = scored["final"][2] + scored["auc"][2]
    seeds = scored["final"][1]
    where = f"the {len(common)} tasks every model has results for" + (f" (left out: {', '.join(left_out)})" if left_out else "")
    if not scored["final"][0]:
        lines.append(f"Over {where}: no seed with results on all of them for every model.")
    else:
        texts = _iqm_texts({metric: scored[metric][0] for metric in scored}, models, reps, seed)
        lines += [f"Over {where}, seeds {', '.join(map(str, seeds))}:", "",
                  "| model | final return: IQM [95% CI] | AUC: IQM [95% CI] |", "|---|---|---|",
                  *(f"| {m} | {' | '.join(texts[m])} |" for m in models)]  # fmt: skip
    lines += ["", "Over each model's own tasks (every task where it has results):", "",
              "| model | tasks | seeds | final return: IQM [95% CI] | AUC: IQM [95% CI] |", "|---|---|---|---|---|"]  # fmt: skip
    for model in models:
        own = common_tasks(runs, tasks, [model])
        own_scored = {metric: score_matrices(runs, own, [model], metric) for metric in ("final", "auc")}
        texts = _iqm_texts({metric: own_scored[metric][0] for metric in own_scored}, [model], reps, seed)[model]
        lines.append(f"| {model} | {len(own)} | {', '.join(map(str, own_scored['final'][1])) or '—'} | {' | '.join(texts)} |")
        dropped += [d for metric in own_scored for d in own_scored[metric][2]]
    if dropped:
        lines += ["", f"Runs left out so that every task has the same seeds: {'; '.join(dict.fromkeys(dropped))}."]
    if scored["final"][0]:
        lines += ["", f"![performance profile]({PROFILE_NAME})", "",
                  f"Performance profile ({PROFILE_NAME}) over the {len(common)} common tasks: the fraction of runs × "
                  "tasks whose final normalised return exceeds τ, with 95% bootstrap bands; a curve above another "
                  "is better at that threshold."]  # fmt: skip
    return lines


def _budget_scale(runs: Sequence[dict[str, Any]]) -> float | None:
    """The one :data:`TARGET_SCALES` scale every run's budget matches, or None."""
    return next((s for s in TARGET_SCALES if all(r["timesteps"] == budget(r["task"], s) for r in runs)), None)


def target_section(runs: Runs, tasks: Sequence[str]) -> list[str]:
    """Markdown lines: :func:`target_check` with its rule, when every compared (task, model) cell
    has at least :data:`TARGET_MIN_SEEDS` finished seeds and every run had the full or 0.2 budget
    scale; else one line saying why it is left out.

    :param runs: Records by (task, model).
    :param tasks: Tasks, in order.
    """
    compared = [t for t in tasks if all(len(_final_values(runs.get((t, m), []))) for m in ("fastweights", STOCK))]
    cells = [(t, m) for t in compared for m in ("fastweights", STOCK)]
    short = [f"{t} / {m} has {len(_final_values(runs[(t, m)]))}" for t, m in cells
             if len(_final_values(runs[(t, m)])) < TARGET_MIN_SEEDS]  # fmt: skip
    ok_runs = [r for t, m in cells for r in runs[(t, m)] if r["status"] == "ok"]
    scale = _budget_scale(ok_runs)
    scales = " or ".join(f"{s:g}" for s in TARGET_SCALES)
    needs = f"needs ≥ {TARGET_MIN_SEEDS} seeds per compared cell and every run at budget scale {scales}"
    if not cells:
        why = "no task where both fast weights and the stock LSTM have results"
    elif short:
        why = f"{'; '.join(short)} seed(s)"
    elif scale is None:
        odd = next(r for r in ok_runs if r["timesteps"] not in {budget(r["task"], s) for s in TARGET_SCALES})
        expected = " or ".join(f"{budget(odd['task'], s):,}" for s in TARGET_SCALES)
        why = f"{odd['task']} / {odd['model']} ran {odd['timesteps']:,} steps, not {expected}"
    else:
        rule = (f"Rule: on each task, fast weights' mean final normalised return ≥ the stock LSTM's mean − 1 std over "
                f"seeds; on the mean over the tasks both ran, ≥ the stock LSTM's mean (checked because every compared "
                f"cell has ≥ {TARGET_MIN_SEEDS} seeds, budget scale {scale:g}).")  # fmt: skip
        table = target_check(runs, tasks)
        return [table[0], "", rule, *table[1:]]
    return [f"Target check (fast weights against the stock LSTM) left out: {why}; it {needs}."]


def _final_values(records: list[dict[str, Any]]) -> np.ndarray:
    return np.array([run_value(r, "final") for r in records if r["status"] == "ok"])


def target_check(runs: Runs, tasks: Sequence[str]) -> list[str]:
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


def curves_figure(runs: Runs, tasks: Sequence[str], models: Sequence[str]) -> Any:
    """One subplot per task: each model's normalised training curve, mean ± std over seeds, and
    one legend below the subplots, kept inside the figure (the figure widens to fit it).

    :param runs: Records by (task, model).
    :param tasks: Subplots, in order.
    :param models: Lines, in order.
    :return: The matplotlib figure (the caller closes it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(tasks), 4) or 1
    rows = max(math.ceil(len(tasks) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, task in zip(axes.flat, tasks):
        for model in models:
            ok = [r for r in runs.get((task, model), []) if r["status"] == "ok" and r["curve_steps"]]
            if not ok:
                continue
            steps = max(r["timesteps"] for r in ok)
            grid = np.linspace(steps / 50, steps, 50)
            curves = np.stack(
                [interpolate_curve(r["curve_steps"], normalise(task, r["curve_returns"]), steps, 50) for r in ok]
            )
            mean, std = curves.mean(axis=0), curves.std(axis=0)
            ax.plot(grid, mean, color=colours[model], label=model)
            ax.fill_between(grid, mean - std, mean + std, color=colours[model], alpha=0.2)
        ax.set(title=task, xlabel="env steps", ylabel="normalised return", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[m], label=m) for m in models]
    # "outside": the constrained layout keeps a band below the axes for the legend
    legend = fig.legend(handles=handles, loc="outside lower center", ncol=len(models), frameon=False)
    fig.canvas.draw()
    needed = legend.get_window_extent().width / fig.dpi + 0.3  # inches, with a margin
    if needed > fig.get_figwidth():  # e.g. one task and five models: one subplot is narrower than the legend
        fig.set_figwidth(needed)
    return fig


def plot_curves(runs: Runs, tasks: Sequence[str], models: Sequence[str], path: Path) -> None:
    """:func:`curves_figure`, written atomically as a PNG.

    :param runs: Records by (task, model).
    :param tasks: Subplots, in order.
    :param models: Lines, in order.
    :param path: The PNG to write.
    """
    import matplotlib.pyplot as plt

    fig = curves_figure(runs, tasks, models)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)


def write_report(
    out: Path, command: str, tasks: Sequence[str] | None = None, models: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED, runs: Runs | None = None,
) -> str:  # fmt: skip
    """Write ``memory_suite.md``, ``memory_suite.png`` and (when the models share tasks and seeds)
    ``memory_suite_profile.png`` in ``out`` from its runs; return the markdown.

    :param out: The suite's output folder.
    :param command: The command line, for the report's header.
    :param tasks: Rows (default: every task with runs).
    :param models: Columns (default: every model with runs).
    :param seeds: Seeds to include (default: all).
    :param reps: Bootstrap replications of the IQMs' intervals and the profile's bands.
    :param seed: Bootstrap seed.
    :param runs: The run records (default: the JSONs under ``<out>/runs``).
    """
    runs = load_runs(out) if runs is None else runs
    if seeds is not None:
        runs = {key: [r for r in records if r["seed"] in seeds] for key, records in runs.items()}
    tasks = ordered(set(tasks) if tasks is not None else {t for t, _ in runs}, list(TASKS))
    models = ordered(set(models) if models is not None else {m for _, m in runs}, MODELS)
    if not runs:
        raise ValueError(f"no runs in {out / 'runs'} or the suite's study; run the suite first")
    text = build_report(runs, tasks, models, command, reps, seed)
    write_text_atomically(out / "memory_suite.md", text)
    plot_curves(runs, tasks, models, out / "memory_suite.png")
    profile, _, _ = score_matrices(runs, common_tasks(runs, tasks, models), models, "final")
    if profile:
        save_performance_profile(profile, out / PROFILE_NAME, reps=reps, seed=seed,
                                 xlabel=r"final normalised return ($\tau$)", title="performance profile")  # fmt: skip
    return text
