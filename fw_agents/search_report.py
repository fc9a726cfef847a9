"""The report of a :mod:`fw_agents.search` study, from the study alone (any machine, any time):
one line per finished trial while workers run, and at the end (or ``--report-only``) a table of
every trial sorted by objective, the best trial once, and a figure of the best trials'
evaluation curves (the intermediate values each trial reported). The live view is
``optuna-dashboard URL`` (the storage URL as its argument; docs/search.md)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fw_agents.runs.files import atomic_path, write_text_atomically

if TYPE_CHECKING:
    import optuna

#: Trials drawn in the report's figure.
TOP_CURVES = 5


def params_text(params: dict[str, Any]) -> str:
    """``learning_rate=0.00084, fast_lr=0.049, ...``: a trial's flat parameters, 3 digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Print one line for a finished trial (an ``optimize`` callback of each worker)."""
    value = f" {trial.value:.3f}" if trial.value is not None else ""
    if trial.state.name == "FAIL" and "error" in trial.user_attrs:
        value = f" ({trial.user_attrs['error']})"
    seconds = f" {trial.duration.total_seconds():.0f}s" if trial.duration else ""
    final = trial.user_attrs.get("final_return")
    final_text = f" final {final:.3f}" if final is not None else ""
    print(
        f"[{socket.gethostname()}:{os.getpid()}] {study.study_name} trial {trial.number} {trial.state.name}{value}"
        f"{final_text}{seconds} ({params_text(trial.params)}) {trial.user_attrs.get('run_dir', '')}",
        flush=True,
    )


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial, those with an objective first, best (highest) first; the others by number."""
    trials = study.get_trials(deepcopy=False)
    scored = sorted((t for t in trials if t.value is not None), key=lambda t: (-t.value, t.number))
    return scored + [t for t in trials if t.value is None]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the highest objective (the lowest number among equals), if any."""
    complete = [t for t in ranked_trials(study) if t.state.name == "COMPLETE"]
    return complete[0] if complete else None


def summary_text(study: optuna.Study) -> str:
    """One line: the study's trials by state and its best trial."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in TrialState)
    best = best_trial(study)
    best_text = f"; best trial {best.number}: {best.value:.3f} ({params_text(best.params)})" if best else ""
    return f"study {study.study_name}: {counts}{best_text}"


def trials_table(study: optuna.Study) -> list[str]:
    """A markdown table of every trial sorted by objective: parameters, objective, final return, state."""
    lines = ["| rank | trial | objective (mean eval return) | final return | state | parameters |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for rank, trial in enumerate(ranked_trials(study), 1):
        value = f"{trial.value:.3f}" if trial.value is not None else "—"
        final = trial.user_attrs.get("final_return")
        state = trial.state.name.lower() + (f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else "")
        lines.append(f"| {rank if trial.value is not None else ''} | {trial.number} | {value} | "
                     f"{'—' if final is None else f'{final:.3f}'} | {state} | {params_text(trial.params)} |")  # fmt: skip
    return lines


def curves_figure(study: optuna.Study, top: int = TOP_CURVES) -> Any:
    """The evaluation curves (reported intermediate values) of the ``top`` best complete trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    best = [t for t in ranked_trials(study) if t.state.name == "COMPLETE"][:top]
    for trial in best:
        steps = sorted(trial.intermediate_values)
        ax.plot(steps, [trial.intermediate_values[s] for s in steps], marker=".",
                label=f"trial {trial.number}: {trial.value:.3f}")  # fmt: skip
    ax.set(xlabel="env steps", ylabel="mean evaluation return", title=f"{study.study_name}: best {len(best)} trials")
    ax.grid(alpha=0.3)
    if best:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_report(study: optuna.Study, folder: Path) -> str:
    """Write ``<folder>/<study>_report.md`` (the summary, the best trial, the trials table) and
    ``<folder>/<study>_best_curves.png``; return the markdown.

    :param study: The search's study.
    :param folder: Where the files go (this machine's ``<runs-root>/search``).
    """
    import matplotlib.pyplot as plt

    best = best_trial(study)
    figure = folder / f"{study.study_name}_best_curves.png"
    lines = [f"# Search {study.study_name}", "", summary_text(study), ""]
    if best is not None:
        lines += [f"Best trial: {best.number}, objective {best.value:.3f}, final return "
                  f"{best.user_attrs.get('final_return', float('nan')):.3f}, {params_text(best.params)}"
                  f"{', run ' + best.user_attrs['run_dir'] if 'run_dir' in best.user_attrs else ''}", ""]  # fmt: skip
    lines += [*trials_table(study), "", f"![best trials' curves]({figure.name})", ""]
    text = "\n".join(lines)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / f"{study.study_name}_report.md", text)
    fig = curves_figure(study)
    try:
        with atomic_path(figure) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)
    return text
