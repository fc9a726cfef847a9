"""The space of ``fw_agents.search`` (the paper's random search), generated from the core
options' spec (:data:`fw_agents.memory.options.FAST_WEIGHTS_OPTIONS`): the learning rate for
every memory, and for fast weights each option with a search space, η in one of two units:

* ``--space share`` (default): ``fast_share``, η as the fast memory's share of the drive, the
  agents' unit;
* ``--space paper``: ``fast_lr``, the paper's absolute η, as the paper searched it
  (``benchmarks/figure5.py``).

Pure Python: importing it pulls no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fw_agents.memory.options import ETA_NAMES, OPTIONS, searched_names, suggest_options

if TYPE_CHECKING:
    import optuna

LEARNING_RATE_RANGE = (1e-4, 3e-3)
#: ``--space`` -> the name of the η it searches.
SPACES = {"share": "fast_share", "paper": "fast_lr"}
#: A study created before ``--space`` existed searched the paper's η.
LEGACY_SPACE = "paper"


def searched_core_options(memory: str, space: str = "share") -> tuple[str, ...]:
    """The core options a search of ``memory`` draws in ``space``."""
    return searched_names(SPACES[space]) if memory == "fastweights" else ()


def fixed_by_search(memory: str) -> tuple[str, ...]:
    """The ``memory_kwargs`` keys a search sets whatever its space (η by either name)."""
    return tuple(dict.fromkeys(ETA_NAMES + searched_core_options(memory))) if memory == "fastweights" else ()


def suggest(trial: optuna.Trial, memory: str, space: str = "share") -> dict[str, Any]:
    """The trial's draw as ``TrainConfig`` keyword arguments: ``learning_rate`` (log-uniform in
    :data:`LEARNING_RATE_RANGE`), for fast weights also ``memory_kwargs`` (the spec's ranges)."""
    params: dict[str, Any] = dict(learning_rate=trial.suggest_float("learning_rate", *LEARNING_RATE_RANGE, log=True))
    names = searched_core_options(memory, space)
    if names:
        params["memory_kwargs"] = suggest_options(trial, names)
    return params


def study_memory_kwargs(memory: str, memory_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The fixed core options that define a study: ``memory_kwargs`` less the searched ones and
    those at the core's own default (a key that is not there means that default)."""
    fixed = fixed_by_search(memory)
    at_default = {key for key, value in memory_kwargs.items() if key in OPTIONS and OPTIONS[key].default == value}
    if memory != "fastweights":
        at_default = set()
    return {key: value for key, value in memory_kwargs.items() if key not in fixed and key not in at_default}


def space_table() -> str:
    """The space as the search's ``--help`` lists it."""
    rows = [f"    {'learning_rate':<15}log-uniform in [{LEARNING_RATE_RANGE[0]:g}, {LEARNING_RATE_RANGE[1]:g}]   every memory"]
    for name in dict.fromkeys(searched_names("fast_share") + searched_names("fast_lr")):
        option = OPTIONS[name]
        where = {"fast_share": " (--space share)", "fast_lr": " (--space paper)"}.get(name, "")
        rows.append(f"    {name:<15}{option.search.text():<34}fastweights{where}")
    return "\n".join(rows)
