"""The training path: train, evaluate and save a recurrent PPO agent with any memory core.

Read top to bottom, as a CleanRL script: :func:`make_env` (the batched
:class:`envs.CatchSB3VecEnv` for Catch ids, ``DummyVecEnv`` otherwise), :func:`build_agent`
(:class:`fw_agents.algorithms.FastRecurrentPPO`, sb3-contrib's ``RecurrentPPO`` with
inference-mode rollouts and a compact rollout buffer, same results, over
:class:`fw_agents.policies.RecurrentMemoryPolicy`), and :func:`train` with its small private
helpers: the settings checked, the run opened (:class:`fw_agents.runs.run.Run`), the callbacks
(evaluation, checkpoints, catch rate, the non-finite stop), ``learn``, and the end of the run::

    model.zip  checkpoints/  progress.csv  events.out.tfevents.*  evaluations.npz
    learning_curve.png  eval_summary.json  episodes.gif  config.json

``train(TrainConfig(...))`` is what ``train_agent.py`` runs (:mod:`fw_agents.train_cli`, the
command line); the settings are :class:`fw_agents.config.TrainConfig`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

import envs
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.config import TrainConfig
from fw_agents.policies import RecurrentMemoryPolicy
from fw_agents.runs.callbacks import (
    AtomicCheckpointCallback,
    CatchRateCallback,
    RunEvalCallback,
    SaveBestAtomically,
    StopOnNonFinite,
    save_atomically,
)
from fw_agents.runs.errors import NonFiniteError
from fw_agents.runs.evaluation import EpisodeTally, episode_cap
from fw_agents.runs.files import write_text_atomically
from fw_agents.runs.preflight import check_memory, probe_env
from fw_agents.runs.run import Run
from fw_agents.validation import one_line

__all__ = ["build_agent", "evaluate", "make_env", "train"]


def make_env(
    env_id: str, n_envs: int, seed: int, render_mode: str | None = None, max_episode_steps: int | None = None
) -> VecEnv:
    """Vectorised env with episode statistics: batched numpy Catch for Catch ids, else ``DummyVecEnv``.

    :param max_episode_steps: Cut every episode there (``gym.make``'s ``TimeLimit``, inside SB3's
        ``Monitor``; :func:`fw_agents.runs.evaluation.episode_cap`). Not for Catch, whose episodes end
        within the board's height.
    """
    if env_id in envs.CATCH_IDS:
        env = VecMonitor(envs.CatchSB3VecEnv.from_id(env_id, n_envs, render_mode=render_mode))
        env.seed(seed)
        return env
    env_kwargs = {"render_mode": render_mode} if render_mode else {}
    if max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = max_episode_steps
    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or None)


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
        batch_size=config.minibatch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef,
        policy_kwargs=config.policy_kwargs(),
        seed=config.seed,
        device=config.device,
        verbose=0,
    )


def train(
    config: TrainConfig,
    callbacks: Sequence[BaseCallback] = (),
    eval_callbacks: Sequence[BaseCallback] = (),
    given_flags: Collection[str] | None = None,
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
    :param given_flags: With ``config.resume``: the fields the user set explicitly (see
        :func:`fw_agents.runs.resume.resumed_config`); the command passes its flags.

    Runs with ``config.threads`` torch threads (restored afterwards); ``config.json`` records
    :func:`run_record`. With ``config.resume`` the run continues as :mod:`fw_agents.runs.resume`
    says (in the checkpoint's folder, with the model's settings). Env, sizes and checkpoint are
    checked before any file is written (``ValueError``). Ctrl-C saves
    ``checkpoints/interrupted_<steps>_steps.zip`` and re-raises ``KeyboardInterrupt``.
    """
    config.validate(across_fields=config.resume is None)  # a checkpoint fixes n_steps and batch_size
    same_folder = False
    if config.resume is not None:
        config, same_folder = Run.resumed_config(config, given_flags)
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
    # evaluation episodes end: at the env's own time limit, else at --eval-max-steps (Catch's end by themselves)
    cap, limit = (None, {}) if is_catch else episode_cap(config.env, config.eval_max_steps)
    eval_env = make_env(config.env, min(config.eval_episodes, 50), config.seed + 10_000, **limit)
    run = None
    try:
        model = build_agent(config, env)
        run = Run.open(
            f"{config.env}-{config.memory}-s{config.seed}", run_record(config, model), runs_root=config.runs_root,
            run_dir=config.run_dir, wandb=config.wandb, wandb_project=config.wandb_project,
            wandb_group=config.wandb_group, wandb_tags=config.wandb_tags,
            continue_at=model.num_timesteps if same_folder else None,
            log_formats=("stdout", "csv", "tensorboard") if config.verbose else ("csv", "tensorboard"),
        )  # fmt: skip
        run_dir = run.path.absolute()  # "--run-dir ." is Path("."): SB3's EvalCallback makedirs("") on it
        model.set_logger(run.logger)
        steps_per_call = config.n_envs
        evaluation = RunEvalCallback(
            eval_env,
            run_dir,
            continue_at=model.num_timesteps if same_folder else None,
            n_eval_episodes=config.eval_episodes,
            eval_freq=max(config.eval_freq // steps_per_call, 1),
            callback_on_new_best=SaveBestAtomically(run_dir / "best" / "best_model.zip"),
            deterministic=True,
            callback_after_eval=CallbackList(list(after_eval)) if after_eval else None,
            verbose=config.verbose,
            show_progress=config.progress_bar,
            max_episode_steps=cap,
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
        if remaining <= 0:  # a resumed run whose training was complete: only its end is left (fw_agents.runs.resume)
            print(f"training complete at {model.num_timesteps} steps; writing the final evaluation, model and plots")
        try:
            if remaining > 0:
                model.learn(
                    remaining,
                    callback=CallbackList([*callbacks, *user_callbacks]),
                    reset_num_timesteps=not config.resume,
                    progress_bar=config.progress_bar,
                )
        except (ValueError, RuntimeError) as error:
            if isinstance(error, NonFiniteError) or not _non_finite_failure(model, error):
                raise
            # NaN/inf that surfaced inside torch (a distribution's argument check, multinomial) before
            # StopOnNonFinite's check: the same stop, not "bad input" (exit 2) or a traceback
            raise NonFiniteError(
                f"non-finite values in training at step {model.num_timesteps} ({one_line(error, 120)}); training "
                "stopped, earlier checkpoints are kept. Try a lower --learning-rate (or --fast-lr for fast weights)"
            ) from None
        except KeyboardInterrupt:
            # mid-rollout, FastRecurrentPPO has put num_timesteps back to the last update's (the weights'
            # step, a rollout boundary), so a resumed run ends exactly at --timesteps
            path = run.checkpoint_path(model.num_timesteps)
            save_atomically(model, path)
            print(f"\ninterrupted at {model.num_timesteps} steps; checkpoint saved to {path}")
            raise
        saved, model_saved = run_dir / "model.zip", False
        try:
            save_atomically(model, saved)
            model_saved = True
            return _finish(config, model, eval_env, run, is_catch, cap)
        except KeyboardInterrupt:  # training is complete; --resume writes what is missing (fw_agents.runs.resume)
            if not model_saved:  # stopped while saving it (a resumed run's older model.zip may be there)
                saved = run.checkpoint_path(model.num_timesteps)
                save_atomically(model, saved)
            print(
                f"\ninterrupted after training; the model is saved to {saved}, the final evaluation, "
                f"plot or GIF was not finished: --resume {run_dir} writes them"
            )
            raise
    finally:
        env.close()
        eval_env.close()
        if run is not None:
            run.close()


def _finish(
    config: TrainConfig, model: RecurrentPPO, eval_env: VecEnv, run: Run, is_catch: bool, cap: int | None
) -> dict[str, Any]:
    """The end of a run: the final evaluation, the learning curve, the GIF and ``eval_summary.json``
    (written last). ``--resume`` of a run interrupted here runs only this (see :mod:`fw_agents.runs.resume`).
    ``cap``: the evaluation episodes' step cap (None: the env ends its episodes itself)."""
    run_dir, tracker = run.path.absolute(), run.tracker
    summary = evaluate(model, eval_env, config.eval_episodes, catch_rate=is_catch, show_progress=config.progress_bar,
                       max_episode_steps=cap)  # fmt: skip
    summary.update(env=config.env, memory=config.memory, timesteps=model.num_timesteps, run_dir=str(run_dir))
    from fw_agents.runs.plots import plot_learning_curve, record_gif

    curve = plot_learning_curve(run_dir, title=f"{config.env} — {config.memory}", catch=is_catch)
    tracker.save_file(curve)
    # media under media/: the summary's keys (eval_summary.json's, e.g. "episodes") stay the evaluation's
    tracker.log_media("media/learning_curve", curve, model.num_timesteps)
    if config.gif_episodes:
        gif = record_gif(model, config.env, run_dir / "episodes.gif", config.gif_episodes, config.seed + 20_000,
                         max_episode_steps=None if is_catch else config.eval_max_steps)  # fmt: skip
        if gif is not None:
            tracker.log_media("media/episodes_gif", gif, model.num_timesteps)
    if config.wandb_log_model:
        tracker.log_artifact(run_dir / "model.zip", f"model-{run_dir.name}")
    # last: its presence marks a finished run (fw_agents.runs.resume.missing_final_files)
    write_text_atomically(run_dir / "eval_summary.json", json.dumps(summary, indent=2) + "\n")
    tracker.log_summary(summary)
    return summary


def _non_finite_failure(model: RecurrentPPO, error: BaseException) -> bool:
    """Whether ``error`` (raised inside ``learn``) comes from NaN/inf: non-finite parameters, or
    torch's own complaints about non-finite values (``Normal``'s argument validation, ``multinomial``)."""
    if not all(bool(torch.isfinite(p).all()) for p in model.policy.parameters()):
        return True
    return re.search(r"\bnan\b|\binf\b|invalid values|non-finite", str(error), re.IGNORECASE) is not None


def run_record(config: TrainConfig, model: RecurrentPPO) -> dict[str, Any]:
    """What ``config.json`` and the W&B config record: every config field (``memory_kwargs``
    resolved) and what the model adds: the algorithm, the PPO settings left at SB3's defaults,
    the encoder's width and the package version."""
    from fw_agents import __version__

    return {
        **config.resolved(),
        "algorithm": type(model).__name__,
        "clip_range": float(model.clip_range(1.0)),
        "vf_coef": float(model.vf_coef),
        "max_grad_norm": float(model.max_grad_norm),
        "features_dim": int(model.policy.features_dim),
        "fw_agents_version": __version__,
    }


def evaluate(
    model: RecurrentPPO, env: VecEnv, episodes: int, catch_rate: bool = True, show_progress: bool = False,
    max_episode_steps: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Deterministic evaluation: mean/std return, episodes, mean length, the episodes a time limit
    cut (``truncated_episodes``) and, for Catch (``catch_rate=True``), the catch rate (the fraction
    of returns > 0).

    :param show_progress: A line every few seconds while it runs (:class:`fw_agents.runs.evaluation.EpisodeTally`).
    :param max_episode_steps: The step cap ``env``'s episodes were given (recorded in the summary
        and named when episodes were cut there); None: none was.
    """
    tally = EpisodeTally(episodes, show_progress, "final evaluation", max_episode_steps)
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True,
                                       callback=tally)  # fmt: skip
    returns = np.asarray(returns, dtype=float)
    summary = dict(
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        episodes=len(returns),
        mean_length=float(np.mean(lengths)),
        truncated_episodes=tally.truncated,
    )
    if max_episode_steps is not None:
        summary["max_episode_steps"] = max_episode_steps
    if catch_rate:
        summary["catch_rate"] = float(np.mean(returns > 0))
    return summary
