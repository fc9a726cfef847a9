"""One memory-suite run, in a worker process: the task's env, the model (each policy's own
defaults), training with the curve of rollout returns, a deterministic evaluation and the run's
JSON record (``benchmarks/memory_suite.py`` schedules the runs).
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from suite_tasks import POPGYM_TASKS, STOCK, TASKS, area_under_curve, normalise

from fw_agents.runs.files import write_text_atomically
from fw_agents.validation import one_line

EVAL_SEED_OFFSET = 10_000


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


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*render_mode.*")  # make_vec_env asks popgym for rgb_array
    warnings.filterwarnings("ignore", message=".*share an object.*")  # popgym reuses its info dicts


def make_task_env(task: str, n_envs: int, seed: int) -> Any:
    """The task's ``VecEnv`` with episode statistics (batched numpy Catch, else ``make_vec_env``).

    :param task: Task name.
    :param n_envs: Number of environments.
    :param seed: Seed of the first one.
    """
    from stable_baselines3.common.env_util import make_vec_env

    from fw_agents.train import make_env

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
    from fw_agents.config import TrainConfig

    defaults = TrainConfig()
    keys = ("learning_rate", "n_steps", "n_epochs", "gamma", "gae_lambda", "ent_coef", "n_envs")
    # the minibatch train_agent.py trains with (batch_size None would give SB3 the whole rollout)
    return {**{key: getattr(defaults, key) for key in keys}, "batch_size": defaults.minibatch_size}


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


# ------------------------------------------------------------------ a worker of the suite's study


def cell_key(task: str, model: str, seed: int) -> str:
    """The study's name of one run: ``task/model/seed<k>`` (also its JSON's place under ``<out>/runs``)."""
    return f"{task}/{model}/seed{seed}"


def run_path(out: Path, key: str) -> Path:
    """Where this machine writes the JSON of the run ``key``."""
    return out / "runs" / f"{key}.json"


def record_value(record: dict[str, Any]) -> float:
    """A record's objective value in the study: its final normalised return (0 when it did not run)."""
    return float(record["final_normalised"]) if record.get("status") == "ok" else 0.0


def run_cell(out: Path, key: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run the study's cell ``key`` (its :class:`Job` fields but ``path``), its JSON under ``out``."""
    return run_job(Job(**job, path=str(run_path(out, key))))


def _finished_line(key: str, record: dict[str, Any]) -> None:
    status = record["status"]
    detail = (f"final {record['final_normalised']:.3f}, auc {record['auc']:.3f}, {record['wall_time_s']:.0f} s"
              if status == "ok" else record["error"])  # fmt: skip
    task, model, seed = key.split("/")
    print(f"[{time.strftime('%H:%M:%S')} pid {os.getpid()}] {task} {model} seed {seed[4:]}: {status}: {detail}",
          flush=True)  # fmt: skip


def suite_worker(storage: str, study_name: str, heartbeat: int, out: str) -> int:
    """One worker of the suite's study: run its waiting cells until none waits or runs.

    :param storage: The study's storage URL.
    :param study_name: The study.
    :param heartbeat: Seconds between a running cell's heartbeats (a silent one is retried after 2 x).
    :param out: This machine's output folder (the runs' JSONs).
    :return: The number of cells this worker ran.
    """
    from fw_agents.cell_study import open_cell_study, run_cells

    study = open_cell_study(storage, study_name, heartbeat)
    return run_cells(study, functools.partial(run_cell, Path(out)), heartbeat, record_value, _finished_line)
