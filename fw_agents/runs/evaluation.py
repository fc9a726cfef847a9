"""Evaluation episodes that end, and that show how far they are.

SB3's ``evaluate_policy`` plays until every episode has ended: with an env that has no time
limit (``CliffWalking-v1``: a deterministic policy that walks into a wall walks there forever)
an evaluation never returns. An evaluation (and GIF) episode is therefore cut after the env's
own ``max_episode_steps`` (its ``TimeLimit``) or, for an env without one, after
``--eval-max-steps`` steps (:func:`episode_cap`); the episodes cut there are counted as
truncated (:class:`EpisodeTally`), recorded (``eval/truncated_episodes``,
``eval_summary.json``'s ``truncated_episodes``) and reported. While an evaluation runs, a line
says how many episodes are done every :data:`PROGRESS_INTERVAL_S` seconds, when the run shows
its progress (``--progress-bar``, the default); a quick evaluation prints nothing.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym

#: Seconds between two progress lines of one evaluation (the first after as long).
PROGRESS_INTERVAL_S = 10.0


def own_time_limit(env_id: str) -> int | None:
    """The ``max_episode_steps`` ``env_id`` is registered with (its ``TimeLimit``), or None.

    :param env_id: A registered id, or ``module:id`` (its module already imported).
    """
    try:
        return gym.spec(env_id.partition(":")[2] or env_id).max_episode_steps
    except gym.error.Error:
        return None


def episode_cap(env_id: str, eval_max_steps: int) -> tuple[int, dict[str, Any]]:
    """The most steps an evaluation episode of ``env_id`` takes, and the ``gym.make`` keyword
    arguments that make it so.

    :param env_id: The env.
    :param eval_max_steps: The cap for an env without a time limit of its own.
    :return: ``(cap, kwargs)``: the env's own ``max_episode_steps`` and ``{}``, or
        ``eval_max_steps`` and ``{"max_episode_steps": eval_max_steps}`` (``gym.make`` wraps the env
        in a ``TimeLimit`` inside SB3's ``Monitor``, so the cut episode ends as any other).
    """
    own = own_time_limit(env_id)
    return (own, {}) if own is not None else (eval_max_steps, {"max_episode_steps": eval_max_steps})


class EpisodeTally:
    """An ``evaluate_policy`` callback: counts the evaluation's episodes as they end, and those a
    time limit cut (``info["TimeLimit.truncated"]``), and prints a progress line now and then.

    :param episodes: The episodes the evaluation plays.
    :param show: Print progress lines (every ``interval`` seconds; none for a quicker evaluation).
    :param label: What the lines call the evaluation (``evaluation at 25000 steps``).
    :param cap: The episodes' step cap, for the lines (None: the env's own time limit, if any).
    :param interval: Seconds between lines (default: :data:`PROGRESS_INTERVAL_S`).
    """

    def __init__(self, episodes: int, show: bool, label: str = "evaluation", cap: int | None = None,
                 interval: float | None = None) -> None:  # fmt: skip
        self.episodes, self.show, self.label, self.cap = episodes, show, label, cap
        self.interval = PROGRESS_INTERVAL_S if interval is None else interval
        self.finished = self.truncated = 0
        self.started = self.shown = time.monotonic()

    def __call__(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        """Called by ``evaluate_policy`` for every env at every step, with its local variables."""
        info = locals_["info"]
        # with a Monitor, only its "episode" marks a real end (an Atari life lost is "done" too)
        if not locals_["done"] or (locals_.get("is_monitor_wrapped") and "episode" not in info):
            return
        self.finished += 1
        self.truncated += bool(info.get("TimeLimit.truncated", False))
        now = time.monotonic()
        if self.show and now - self.shown >= self.interval:
            self.shown = now
            cut = f", {self.truncated} {cut_text(self.cap)}" if self.truncated else ""
            print(f"{self.label}: {self.finished}/{self.episodes} episodes{cut} ({now - self.started:.0f} s)", flush=True)


def cut_text(cap: int | None = None) -> str:
    """How truncated episodes are named: ``"cut at 1000 steps"``, or ``"cut by the time limit"``."""
    return "cut by the time limit" if cap is None else f"cut at {cap} steps"
