"""Train, evaluate and save a recurrent PPO agent with any memory core.

``train(TrainConfig(...))`` is what ``train_agent.py`` runs: it builds the env (the
batched :class:`envs.CatchSB3VecEnv` for Catch ids, ``DummyVecEnv`` otherwise),
:class:`fw_agents.algorithms.FastRecurrentPPO` (sb3-contrib's ``RecurrentPPO`` with
inference-mode rollouts and a compact rollout buffer, same results) with
:class:`fw_agents.policies.RecurrentMemoryPolicy`, the callbacks (evaluation, checkpoints,
catch rate) and the run directory::

    model.zip  checkpoints/  progress.csv  events.out.tfevents.*  evaluations.npz
    learning_curve.png  eval_summary.json  episodes.gif  config.json
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

import envs
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.cli import KeyFlag, option
from fw_agents.files import atomic_path, write_text_atomically
from fw_agents.memory import MEMORY_NAMES, make_memory, memory_class
from fw_agents.policies import CRITIC_MODES, RecurrentMemoryPolicy, default_memory_kwargs
from fw_agents.preflight import check_memory, probe_env
from fw_agents.resume import read_checkpoint, resumed_config
from fw_agents.tracking import WANDB_MODES, start_run
from fw_agents.validation import check_bool, check_choice, check_float, check_int

DEVICES = ("auto", "cpu", "cuda")
#: Constructor parameters every core takes from the policy, not from ``memory_kwargs``.
_CORE_SIZE_PARAMETERS = ("self", "input_size", "hidden_size")


def core_options(memory: str) -> tuple[str, ...]:
    """The ``memory_kwargs`` keys ``memory``'s core accepts: its constructor's parameters after the sizes."""
    parameters = inspect.signature(memory_class(memory)).parameters
    return tuple(name for name in parameters if name not in _CORE_SIZE_PARAMETERS)


def check_memory_kwargs(memory: str, memory_kwargs: Any, hidden_size: int = 128) -> dict[str, Any]:
    """``memory_kwargs`` if ``memory``'s core takes them; ``ValueError`` otherwise.

    An unknown key is named with the accepted ones (:func:`core_options`); the values are checked
    by the core itself, a throwaway one of width ``hidden_size`` built over the policies' defaults
    on the ``meta`` device (no memory, no random numbers drawn).

    :return: The resolved options: :func:`fw_agents.policies.default_memory_kwargs` with these over them.
    """
    if not isinstance(memory_kwargs, dict):
        raise ValueError(f"memory_kwargs must be a dict, got {memory_kwargs!r}")
    accepted = core_options(memory)
    unknown = [key for key in memory_kwargs if key not in accepted]
    if unknown:
        raise ValueError(
            f"unknown memory_kwargs key {unknown[0]!r} for memory {memory}; accepted: {', '.join(accepted) or 'none'}"
        )
    resolved = {**default_memory_kwargs(memory), **memory_kwargs}
    try:
        with torch.device("meta"):  # sizes and checks without allocating (or drawing random numbers)
            make_memory(memory, 1, hidden_size, **resolved)
    except TypeError as error:
        raise ValueError(f"memory_kwargs for {memory}: {error}") from None
    return resolved


def _memory_kwargs_help() -> str:
    per_core = "; ".join(f"{name}: {', '.join(core_options(name)) or '-'}" for name in MEMORY_NAMES)
    return (
        "core options as KEY=VALUE (VALUE a Python literal), over the core's defaults "
        f"(fw_agents.policies.DEFAULT_MEMORY_KWARGS); keys by core: {per_core}"
    )


@dataclass
class TrainConfig:
    """Every knob of a training run, each declared once: ``train_agent.py``'s flags are generated
    from these fields (``fw_agents.cli``). The defaults solve ``Catch-v0`` in a few minutes on 2
    CPU cores."""

    env: str = option(
        "Catch-v0",
        help=f"Gymnasium id: a Catch id ({', '.join(envs.CATCH_IDS)}), any registered id, or module:id "
        "to import the module that registers it first (e.g. popgym:popgym-RepeatFirstEasy-v0)",
    )
    memory: str = option("fastweights", help="memory core", choices=MEMORY_NAMES)
    timesteps: int = option(300_000, help="total env steps")
    n_envs: int = option(16, help="parallel envs")
    seed: int = option(0, help="seed of the model and the envs (evaluation envs: seed + 10000)")
    device: str = option("auto", help="torch device (auto: cuda when available)", choices=DEVICES)
    threads: int | None = option(
        1,
        help="torch CPU threads during the run (None, from Python only: torch's own choice). 1 as in "
        "rl-baselines3-zoo: on a busy 2-core machine torch's 2 threads trained 20x slower than 1",
    )
    learning_rate: float = option(1e-3, help="Adam step size", aliases=("--lr",))
    n_steps: int = option(64, help="rollout length per env between updates")
    batch_size: int = option(256, help="minibatch size (>= 2: advantages are normalised over it)")
    n_epochs: int = option(4, help="passes over each rollout per update")
    gamma: float = option(0.99, help="discount factor, in (0, 1]")
    gae_lambda: float = option(0.95, help="GAE lambda, in (0, 1]")
    ent_coef: float = option(0.01, help="entropy bonus coefficient, >= 0")
    hidden_size: int = option(128, help="memory core width")
    memory_kwargs: dict[str, Any] = option(default_factory=dict, help=_memory_kwargs_help())
    critic: str = option("shared", help="value head on the actor's core (shared) or its own (separate)",
                         choices=CRITIC_MODES)  # fmt: skip
    eval_freq: int = option(25_000, help="env steps between evaluations")
    eval_episodes: int = option(200, help="episodes per evaluation (and in the final one)")
    checkpoint_freq: int = option(50_000, help="env steps between checkpoints")
    gif_episodes: int = option(3, help="episodes recorded in episodes.gif (0: no GIF)")
    run_dir: str | None = option(None, help="run directory (None: <runs-root>/<env>-<memory>-s<seed>-<time>)")
    runs_root: str = option("runs", help="parent folder of auto-named run directories")
    wandb: str | None = option(
        None, help="W&B mode (None: $WANDB_MODE, else online with credentials, else offline)", choices=WANDB_MODES
    )
    resume: str | None = option(
        None,
        metavar="PATH",
        help="continue a run: a checkpoint .zip, or a run folder (its latest checkpoint). The run goes on in "
        "the checkpoint's folder (appending to its curves) with the model's settings; --timesteps is the total",
    )
    trust_checkpoint: bool = option(
        False,
        help="let --resume's file run code when loaded (SB3 unpickles it); only for files you made or trust. "
        "Without it, a file that needs more than plain data (spaces, arrays, schedules) is refused",
    )
    progress_bar: bool = option(True, help="show a progress bar")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad value and what is accepted."""
        if not env_registered(self.env):
            catch = ", ".join(envs.CATCH_IDS)
            raise ValueError(
                f"unknown env id {self.env!r}; use a registered Gymnasium id, e.g. {catch}, "
                "or module:id to import the module that registers it (e.g. popgym:popgym-RepeatFirstEasy-v0)"
            )
        check_choice("memory", self.memory, MEMORY_NAMES)
        check_choice("device", self.device, DEVICES)
        check_choice("critic", self.critic, CRITIC_MODES)
        if self.wandb is not None:
            check_choice("wandb", self.wandb, WANDB_MODES)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
        for name in ("timesteps", "n_envs", "n_steps", "n_epochs", "hidden_size", "eval_freq", "eval_episodes",
                     "checkpoint_freq"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        check_int("batch_size", self.batch_size, 2)  # PPO normalises advantages over the minibatch: 1 gives NaN
        check_int("gif_episodes", self.gif_episodes, 0)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        check_float("learning_rate", self.learning_rate, 0)
        check_float("gamma", self.gamma, 0, 1, high_inclusive=True)
        check_float("gae_lambda", self.gae_lambda, 0, 1, high_inclusive=True)
        check_float("ent_coef", self.ent_coef, 0, low_inclusive=True)
        check_bool("progress_bar", self.progress_bar)
        check_memory_kwargs(self.memory, self.memory_kwargs, self.hidden_size)
        check_bool("trust_checkpoint", self.trust_checkpoint)
        if self.resume is not None and not (os.access(self.resume, os.R_OK) and Path(self.resume).exists()):
            raise ValueError(f"cannot read resume checkpoint {self.resume!r} (no such readable file or run folder)")

    def resolved_memory_kwargs(self) -> dict[str, Any]:
        """The core's options: :func:`fw_agents.policies.default_memory_kwargs` with ``memory_kwargs`` over them."""
        return {**default_memory_kwargs(self.memory), **self.memory_kwargs}

    def resolved(self) -> dict[str, Any]:
        """Every field, ``memory_kwargs`` resolved: what ``config.json`` and W&B record."""
        return {**asdict(self), "memory_kwargs": self.resolved_memory_kwargs()}

    def policy_kwargs(self) -> dict[str, Any]:
        """``RecurrentMemoryPolicy``'s keyword arguments."""
        return dict(
            memory=self.memory,
            hidden_size=self.hidden_size,
            memory_kwargs=self.resolved_memory_kwargs(),
            critic=self.critic,
        )


def _fast_weights_flag(flag: str, key: str, kind: type, help: str) -> KeyFlag:
    default = default_memory_kwargs("fastweights")[key]
    return KeyFlag(flag, "memory_kwargs", key, kind, f"fast weights: {help}", ("memory", "fastweights"), default)


#: Command-line shortcuts for the fast-weights options (README and docs use them): ``--decay 0.9``
#: is ``--memory-kwargs decay=0.9``, and an error with another ``--memory``.
CORE_FLAGS: tuple[KeyFlag, ...] = (
    _fast_weights_flag("--fast-lr", "fast_lr", float, "η, the fast memory's share of the drive (--fast-normalize)"),
    _fast_weights_flag("--decay", "decay", float, "λ, the share of the fast memory kept at each step"),
    _fast_weights_flag("--inner-steps", "inner_steps", int, "S, inner-loop steps per time step"),
    _fast_weights_flag("--fast-normalize", "normalize", bool, "η is the fast memory's share of the drive (write "
                       "scaled by (1-λ)/H); --no-fast-normalize reads it as the paper's absolute η"),
)  # fmt: skip


def env_registered(env_id: str) -> bool:
    """Whether ``env_id`` names a registered Gymnasium env. Gymnasium's ``module:id`` form
    (e.g. ``popgym:popgym-RepeatFirstEasy-v0``) imports ``module`` first, as ``gym.make`` does."""
    module, sep, name = env_id.partition(":")
    if sep:
        try:
            importlib.import_module(module)
        except ImportError:
            return False
        env_id = name
    return env_id in gym.registry


def make_env(env_id: str, n_envs: int, seed: int, render_mode: str | None = None) -> VecEnv:
    """Vectorised env with episode statistics: batched numpy Catch for Catch ids, else ``DummyVecEnv``."""
    if env_id in envs.CATCH_IDS:
        env = VecMonitor(envs.CatchSB3VecEnv.from_id(env_id, n_envs, render_mode=render_mode))
        env.seed(seed)
        return env
    env_kwargs = {"render_mode": render_mode} if render_mode else None
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)


class CatchRateCallback(BaseCallback):
    """Logs ``rollout/catch_rate``: the fraction of finished training episodes whose ball was caught."""

    def __init__(self) -> None:
        super().__init__()
        self._caught: list[bool] = []

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done and "caught" in info:
                self._caught.append(bool(info["caught"]))
        return True

    def _on_rollout_end(self) -> None:
        if self._caught:
            self.logger.record("rollout/catch_rate", float(np.mean(self._caught[-100:])))


class RunEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` for a run folder.

    * ``evaluations.npz`` is replaced atomically after each evaluation (SB3 writes it in place),
      and a resumed run continues its history (and its best mean reward, so the best model is
      only replaced by a better one).
    * For envs whose ``info`` says ``"caught"`` at the end of an episode (Catch), it logs
      ``eval/catch_rate`` in the same dump as ``eval/mean_reward`` (recorded as each evaluation
      episode ends, before SB3 dumps).

    :param eval_env: The evaluation env.
    :param run_dir: The run folder (``evaluations.npz`` goes there).
    :param kwargs: ``EvalCallback``'s other arguments.
    """

    def __init__(self, eval_env: VecEnv, run_dir: Path, **kwargs: Any) -> None:
        super().__init__(eval_env, log_path=str(run_dir), **kwargs)
        self.final_path = run_dir / "evaluations.npz"
        self.log_path = str(run_dir / ".evaluations.partial")  # np.savez adds ".npz"; renamed when complete
        if self.final_path.exists():
            self._continue_history()

    def _continue_history(self) -> None:
        with np.load(self.final_path) as saved:
            if saved["results"].ndim != 2 or saved["results"].shape[1] != self.n_eval_episodes:
                self.final_path.replace(self.final_path.with_name("evaluations.before-resume.npz"))
                return  # another number of episodes per evaluation: the arrays would not stack
            self.evaluations_timesteps = saved["timesteps"].tolist()
            self.evaluations_results = saved["results"].tolist()
            self.evaluations_length = saved["ep_lengths"].tolist()
            if "successes" in saved:
                self.evaluations_successes = saved["successes"].tolist()
        self.best_mean_reward = float(np.max(np.mean(self.evaluations_results, axis=1)))

    def _on_step(self) -> bool:
        self._caught: list[bool] = []
        evaluations = len(self.evaluations_timesteps)
        try:
            go_on = super()._on_step()
            if len(self.evaluations_timesteps) > evaluations:
                os.replace(self.log_path + ".npz", self.final_path)
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: no half-written file stays behind
            Path(self.log_path + ".npz").unlink(missing_ok=True)
            raise
        return go_on

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        super()._log_success_callback(locals_, globals_)
        if locals_["done"] and "caught" in locals_["info"]:
            self._caught.append(bool(locals_["info"]["caught"]))
            self.logger.record("eval/catch_rate", float(np.mean(self._caught)))


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or parameter; the run stops (see :class:`StopOnNonFinite`)."""


class StopOnNonFinite(BaseCallback):
    """Stops training with :class:`NonFiniteError` as soon as an update leaves a non-finite loss
    or policy parameter, before the next rollout samples from it (where torch would otherwise
    fail on a NaN probability, or training would go on silently). Checked once per update."""

    def _on_rollout_start(self) -> None:
        loss = self.logger.name_to_value.get("train/loss")  # the last update's, not yet dumped
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.policy.parameters()]).all()
        if bool(finite) and (loss is None or math.isfinite(loss)):
            return
        what = "loss" if loss is not None and not math.isfinite(loss) else "parameters"
        raise NonFiniteError(
            f"non-finite {what} after the update ending at step {self.num_timesteps}; training stopped, "
            "earlier checkpoints are kept. Try a lower --learning-rate (or --fast-lr for fast weights)"
        )

    def _on_step(self) -> bool:
        return True


def build_agent(config: TrainConfig, env: VecEnv) -> RecurrentPPO:
    """``FastRecurrentPPO`` with the memory policy, or the checkpoint named by ``config.resume``
    (loaded without unpickling code from it unless ``config.trust_checkpoint``)."""
    if config.resume:
        return FastRecurrentPPO.load(config.resume, env=env, device=config.device, trusted=config.trust_checkpoint)
    return FastRecurrentPPO(
        RecurrentMemoryPolicy,
        env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef,
        policy_kwargs=config.policy_kwargs(),
        seed=config.seed,
        device=config.device,
        verbose=0,
    )


def _save_atomically(model: RecurrentPPO, path: Path) -> None:
    """``model.save(path)`` through :func:`fw_agents.files.atomic_path`: a crash, a kill or a
    full disk mid-save never leaves a truncated model under the final name."""
    with atomic_path(path) as tmp:
        model.save(tmp)


class AtomicCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback`` (same arguments, same ``<prefix>_<steps>_steps.zip`` names)
    with every zip written atomically (:func:`_save_atomically`); SB3's own writes in place."""

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            _save_atomically(self.model, Path(self._checkpoint_path(extension="zip")))
        return True


class SaveBestAtomically(BaseCallback):
    """``EvalCallback``'s ``callback_on_new_best``: writes the new best model to ``path``
    atomically (``EvalCallback``'s own ``best_model_save_path`` writes in place).

    :param path: Where the best model goes, e.g. ``best/best_model.zip``.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _on_step(self) -> bool:
        _save_atomically(self.model, self.path)
        return True


def train(
    config: TrainConfig, callbacks: Sequence[BaseCallback] = (), eval_callbacks: Sequence[BaseCallback] = ()
) -> dict[str, Any]:
    """Train, evaluate and save; returns the evaluation summary (also in ``eval_summary.json``).

    :param config: The run's settings.
    :param callbacks: SB3 callbacks called at every step after the project's own (non-finite
        check, catch rate, checkpoints, periodic evaluation). One whose ``_on_step`` returns
        False stops training early; the run then saves, evaluates and returns as usual.
    :param eval_callbacks: SB3 callbacks called after each periodic evaluation, as
        ``EvalCallback``'s ``callback_after_eval``: their ``self.parent`` is the
        ``EvalCallback`` (``last_mean_reward``, ``evaluations_timesteps``, ...), so they can
        report, prune or stop (return False) on the evaluation, like SB3's
        ``StopTrainingOnNoModelImprovement``.

    Runs with ``config.threads`` torch threads (restored afterwards); ``config.json`` records
    :meth:`TrainConfig.resolved`. Ctrl-C saves ``checkpoints/interrupted_<steps>_steps.zip``
    (resume it with ``--resume``) and re-raises ``KeyboardInterrupt``.
    """
    config.validate()
    same_folder = False
    if config.resume is not None:
        config, same_folder = resumed_config(config, read_checkpoint(config.resume))
        config.validate()
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, same_folder, callbacks, eval_callbacks)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    config: TrainConfig,
    same_folder: bool,
    user_callbacks: Sequence[BaseCallback],
    after_eval: Sequence[BaseCallback],
) -> dict[str, Any]:
    is_catch = config.env in envs.CATCH_IDS  # reward +1 exactly when the ball is caught
    observation, _ = probe_env(config.env)  # bad envs, models and sizes fail before any file is written
    check_memory(observation, config.memory, config.hidden_size, config.resolved_memory_kwargs(), config.n_envs,
                 config.n_steps, separate_critic=config.critic == "separate")  # fmt: skip
    env = make_env(config.env, config.n_envs, config.seed)
    eval_env = make_env(config.env, min(config.eval_episodes, 50), config.seed + 10_000)
    tracker = None
    try:
        model = build_agent(config, env)
        name = f"{config.env}-{config.memory}-s{config.seed}"
        tracker = start_run(config.runs_root, name, config.resolved(), run_dir=config.run_dir,
                            wandb_mode=config.wandb, resume=same_folder)  # fmt: skip
        run_dir = tracker.run_dir
        model.set_logger(tracker.logger)
        steps_per_call = config.n_envs
        evaluation = RunEvalCallback(
            eval_env,
            run_dir,
            n_eval_episodes=config.eval_episodes,
            eval_freq=max(config.eval_freq // steps_per_call, 1),
            callback_on_new_best=SaveBestAtomically(run_dir / "best" / "best_model.zip"),
            deterministic=True,
            callback_after_eval=CallbackList(list(after_eval)) if after_eval else None,
        )
        for callback in after_eval:  # a CallbackList does not pass its parent on
            callback.parent = evaluation
        callbacks = [
            StopOnNonFinite(),
            CatchRateCallback(),
            AtomicCheckpointCallback(
                max(config.checkpoint_freq // steps_per_call, 1), str(run_dir / "checkpoints"), "model"
            ),
            evaluation,
        ]
        remaining = config.timesteps - model.num_timesteps
        try:
            if remaining > 0:
                model.learn(
                    remaining,
                    callback=CallbackList([*callbacks, *user_callbacks]),
                    reset_num_timesteps=not config.resume,
                    progress_bar=config.progress_bar,
                )
        except KeyboardInterrupt:
            path = run_dir / "checkpoints" / f"interrupted_{model.num_timesteps}_steps.zip"
            _save_atomically(model, path)
            print(f"\ninterrupted at {model.num_timesteps} steps; checkpoint saved to {path}")
            raise
        _save_atomically(model, run_dir / "model.zip")
        summary = evaluate(model, eval_env, config.eval_episodes, catch_rate=is_catch)
        summary.update(env=config.env, memory=config.memory, timesteps=model.num_timesteps, run_dir=str(run_dir))
        write_text_atomically(run_dir / "eval_summary.json", json.dumps(summary, indent=2) + "\n")
        tracker.log_summary(summary)
        from fw_agents.plots import plot_learning_curve, record_gif

        curve = plot_learning_curve(run_dir, title=f"{config.env} — {config.memory}", catch=is_catch)
        tracker.save_file(curve)
        if config.gif_episodes:
            record_gif(model, config.env, run_dir / "episodes.gif", config.gif_episodes, config.seed + 20_000)
        return summary
    finally:
        env.close()
        eval_env.close()
        if tracker is not None:
            tracker.close()


def evaluate(model: RecurrentPPO, env: VecEnv, episodes: int, catch_rate: bool = True) -> dict[str, Any]:
    """Deterministic evaluation: mean/std return, episodes, mean length and, for Catch
    (``catch_rate=True``), the catch rate (the fraction of returns > 0)."""
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    returns = np.asarray(returns, dtype=float)
    summary = dict(
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        episodes=len(returns),
        mean_length=float(np.mean(lengths)),
    )
    if catch_rate:
        summary["catch_rate"] = float(np.mean(returns > 0))
    return summary
