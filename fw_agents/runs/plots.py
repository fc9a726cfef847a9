"""Pictures of a run: the learning curve (PNG) and a GIF of evaluation episodes."""

from __future__ import annotations

import csv
from pathlib import Path

import gymnasium as gym
import numpy as np
from matplotlib.figure import Figure

from fw_agents.runs.files import atomic_path
from fw_agents.validation import one_line


def _training_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, ep_rew_mean, catch_rate) from the SB3 ``progress.csv`` (NaN where missing)."""
    path = run_dir / "progress.csv"
    if not path.exists():
        return np.array([]), np.array([]), np.array([])
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("time/total_timesteps")]

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])

    return column("time/total_timesteps"), column("rollout/ep_rew_mean"), column("rollout/catch_rate")


def plot_learning_curve(run_dir: str | Path, title: str = "", catch: bool = True) -> Path:
    """Write ``learning_curve.png``: return (and, for Catch, catch rate) vs env steps,
    for training and evaluation episodes.

    :param run_dir: A run directory with ``progress.csv`` and/or ``evaluations.npz``.
    :param title: Figure title.
    :param catch: Catch's rewards (±1 at the end): add the catch-rate panel, fix the y range.
    :return: Path of the PNG.
    """
    run_dir = Path(run_dir)
    fig = Figure(figsize=(11 if catch else 6, 4))  # drawn off-screen: no pyplot, the user's backend untouched
    axes = fig.subplots(1, 2 if catch else 1, squeeze=False)
    ax_ret = axes[0, 0]
    steps, train_return, train_catch = _training_curve(run_dir)
    for ax, values, label in ((ax_ret, train_return, "training episodes (mean of last 100)"),
                              (axes[0, -1] if catch else None, train_catch, "training episodes")):  # fmt: skip
        logged = ~np.isnan(values)  # rows of other dumps (evaluations) leave gaps: join the points
        if ax is not None and logged.any():
            ax.plot(steps[logged], values[logged], label=label, alpha=0.6)
    evaluations = run_dir / "evaluations.npz"
    if evaluations.exists():
        with np.load(evaluations) as data:
            t, results = data["timesteps"], data["results"]
        mean, std = results.mean(axis=1), results.std(axis=1)
        low, high = (-1.0, 1.0) if catch else (results.min(axis=1), results.max(axis=1))
        ax_ret.plot(t, mean, "o-", label="evaluation (deterministic)")
        ax_ret.fill_between(t, np.maximum(mean - std, low), np.minimum(mean + std, high), alpha=0.2,
                            label="evaluation ± 1 std (within the returns' range)")  # fmt: skip
        if catch:
            axes[0, 1].plot(t, (results > 0).mean(axis=1), "o-", label="evaluation (deterministic)")
    ax_ret.set(xlabel="env steps", ylabel="episode return")
    if catch:
        ax_ret.set_ylim(-1.05, 1.05)
        axes[0, 1].set(xlabel="env steps", ylabel="catch rate", ylim=(-0.02, 1.02))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return path


#: Most frames in a GIF (each a full rendered image, held in memory until the GIF is written).
MAX_GIF_FRAMES = 1000


def record_gif(model, env_id: str, path: str | Path, episodes: int = 3, seed: int = 0, fps: int = 8,
               max_episode_steps: int | None = None) -> Path | None:  # fmt: skip
    """Play ``episodes`` deterministic episodes with ``model`` and write them as a GIF.

    Returns None (and writes nothing, with a one-line note) when the env cannot render
    ``rgb_array`` frames (no such mode, or a missing renderer such as pygame).

    :param max_episode_steps: For an env without a time limit of its own, cut each episode there
        (:func:`fw_agents.runs.evaluation.episode_cap`): an episode the policy never ends would never end
        the GIF. None: no cap. The GIF stops at :data:`MAX_GIF_FRAMES` frames in any case.
    """
    from fw_agents.runs.evaluation import episode_cap

    limit = {} if max_episode_steps is None else episode_cap(env_id, max_episode_steps)[1]
    import imageio.v2 as imageio

    frames = []
    try:
        probe = gym.make(env_id)
        modes = probe.metadata.get("render_modes") or []
        probe.close()
        if "rgb_array" not in modes:
            print(f"no GIF: {env_id} has no rgb_array rendering (render modes: {', '.join(modes) or 'none'})")
            return None
        env = gym.make(env_id, render_mode="rgb_array", **limit)
    except Exception as error:  # noqa: BLE001 - an env without rgb_array rendering simply gets no GIF
        print(f"no GIF: {env_id} cannot render rgb_array frames ({type(error).__name__})")
        return None
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            state, start, done = None, np.ones(1, dtype=bool), False
            while not done and len(frames) < MAX_GIF_FRAMES:
                frames.append(env.render())
                batch = {k: np.asarray(v)[None] for k, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[None]
                action, state = model.predict(batch, state=state, episode_start=start, deterministic=True)
                obs, _, terminated, truncated, _ = env.step(action[0])  # any action space
                start = np.zeros(1, dtype=bool)
                done = terminated or truncated
            frames.append(env.render())
            if len(frames) >= MAX_GIF_FRAMES:
                print(f"episodes.gif: the first {len(frames)} frames (at most {MAX_GIF_FRAMES})")
                break
    except Exception as error:  # noqa: BLE001 - e.g. gymnasium's DependencyNotInstalled for pygame
        print(f"no GIF: rendering {env_id} failed ({one_line(error, 120)})")
        return None
    finally:
        env.close()
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, frames, duration=1000 / fps, loop=0)  # milliseconds per frame (pillow)
    return Path(path)
