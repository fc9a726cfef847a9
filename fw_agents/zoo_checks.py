"""The zoo plugin's checks of what the user gives ``train`` and ``enjoy``, each failure one line.

rl_zoo3 reports bad input as it meets it: a 32-line usage for a bad ``--algo``, and a
traceback from deep inside gymnasium, SB3 or the policy for an unknown env, an env whose spaces
the algorithm cannot take, a bad ``policy_kwargs``, a missing run folder or an unreadable
model, after ``train`` has made the run's folder. The plugin checks each of them where the zoo
reads it, with this project's own validators, and raises :class:`ZooInputError` (a
``ValueError``: ``python -m fw_agents.zoo`` prints ``error: <message>`` and exits 2):

* :class:`ZooArgumentParser` (the zoo's parser, through :func:`one_line_parsers`): argparse's
  errors in one line, ``--gym-packages`` importable and ``--env`` registered.
* :func:`check_hyperparams` (called by :class:`fw_agents.zoo.ExperimentManager` before the zoo
  creates the run folder): ``policy_kwargs`` a dict; for a recurrent PPO, the env's spaces
  (:func:`fw_agents.runs.preflight.probe_env`); for this project's policies, every key and value of
  ``policy_kwargs`` and the rollout's memory (:func:`fw_agents.runs.preflight.check_memory`).
* :func:`checked_model_path` (``enjoy``'s ``get_model_path``): a run folder and a readable model
  zip for ``--algo`` and ``--env``, or what the folder holds instead.

Only these known kinds are mapped; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import glob
import importlib
import inspect
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any
from unittest import mock

import gymnasium as gym
from rl_zoo3 import enjoy as zoo_enjoy
from rl_zoo3 import train as zoo_train
from rl_zoo3 import utils as zoo_utils
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.policies import ActorCriticPolicy

from fw_agents.cli import OneLineArgumentParser
from fw_agents.config import CRITIC_MODES
from fw_agents.config_checks import check_memory_kwargs
from fw_agents.memory import MEMORY_NAMES
from fw_agents.memory.options import translate_legacy_options
from fw_agents.policies import RecurrentMemoryPolicy
from fw_agents.runs.preflight import check_memory, probe_env
from fw_agents.runs.safe_load import read_model_data
from fw_agents.validation import check_int


class ZooInputError(ValueError):
    """Bad input to ``python -m fw_agents.zoo``, in one line naming the value and what is accepted."""


# ------------------------------------------------------------------------ the command line
class ZooArgumentParser(OneLineArgumentParser):
    """The zoo's ``ArgumentParser``: an error is one line (``<prog>: error: <message>``, exit 2,
    no usage), and a parsed ``--env`` must be registered once ``--gym-packages`` are imported
    (the zoo's ``train`` raised a ``ValueError`` traceback, its ``enjoy`` looked for a model)."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        for module in getattr(parsed, "gym_packages", None) or ():
            try:
                importlib.import_module(module)
            except ImportError as error:
                self.error(f"--gym-packages {module}: cannot import it ({error})")
        env = getattr(parsed, "env", None)
        env_id = str(getattr(env, "gym_id", env))
        if env is not None and env_id not in gym.registry:
            close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            self.error(
                f"unknown env id {env_id!r}; {hint}use a registered Gymnasium id (e.g. Catch-v0, CatchBlind16-v0, "
                "CartPole-v1), or --gym-packages MODULE to import the module registering it"
            )
        return parsed


class _ArgparseWithZooParser(ModuleType):
    """What the zoo's ``train`` and ``enjoy`` see as ``argparse``: ``ArgumentParser`` is
    :class:`ZooArgumentParser`, everything else argparse's own."""

    ArgumentParser = ZooArgumentParser

    def __getattr__(self, name: str) -> Any:
        return getattr(argparse, name)


@contextlib.contextmanager
def one_line_parsers() -> Iterator[None]:
    """Run the zoo's ``train`` / ``enjoy`` inside: their command lines parsed by :class:`ZooArgumentParser`."""
    proxy = _ArgparseWithZooParser("argparse")
    with mock.patch.object(zoo_train, "argparse", proxy), mock.patch.object(zoo_enjoy, "argparse", proxy):
        yield


# ------------------------------------------------------------------------- hyper-parameters
def _policy_keywords() -> tuple[str, ...]:
    """The ``policy_kwargs`` keys :class:`~fw_agents.policies.RecurrentMemoryPolicy` takes (its
    own, then those it passes on to SB3's ``ActorCriticPolicy``)."""
    positional = {"self", "observation_space", "action_space", "lr_schedule", "args", "kwargs"}
    names = [*inspect.signature(RecurrentMemoryPolicy.__init__).parameters,
             *inspect.signature(ActorCriticPolicy.__init__).parameters]  # fmt: skip
    return tuple(dict.fromkeys(name for name in names if name not in positional))


def check_hyperparams(
    algo: type, env_id: str, policy: Any, hyperparams: dict[str, Any], n_envs: int,
    env_kwargs: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Check an experiment's hyper-parameters, as the zoo hands them to the algorithm, before it
    creates the run folder or an env.

    :param algo: The algorithm class (``ALGOS[--algo]``).
    :param env_id: The env id.
    :param policy: The experiment's policy, as a class when it is one of this project's (else
        ``None``: its ``policy_kwargs`` are the policy's own business).
    :param hyperparams: The algorithm's keyword arguments (``policy_kwargs`` already evaluated).
    :param n_envs: The experiment's number of envs.
    :param env_kwargs: The env's keyword arguments (``--env-kwargs`` or the YAML's).
    :raises ZooInputError: ``policy_kwargs`` not a dict; an env a recurrent PPO cannot take; for
        this project's policies, an unknown ``policy_kwargs`` key, a bad ``memory``,
        ``hidden_size``, ``critic`` or ``memory_kwargs``, or a rollout that does not fit in memory.
    """
    policy_kwargs = hyperparams.get("policy_kwargs", {})
    if not isinstance(policy_kwargs, dict):
        raise ZooInputError(f"policy_kwargs must be a dict, e.g. \"dict(memory='lstm', hidden_size=64)\"; "
                            f"got {policy_kwargs!r}")  # fmt: skip
    if not (isinstance(algo, type) and issubclass(algo, RecurrentPPO)):
        return
    try:
        observation, _ = probe_env(env_id, env_kwargs)
    except ValueError as error:
        raise ZooInputError(str(error)) from None
    if policy is None:
        return
    accepted = _policy_keywords()
    unknown = [key for key in policy_kwargs if key not in accepted]
    if unknown:
        raise ZooInputError(
            f"unknown policy_kwargs key {unknown[0]!r} for {policy.__name__}; accepted: {', '.join(accepted)}"
        )
    defaults = inspect.signature(RecurrentMemoryPolicy.__init__).parameters
    memory = policy_kwargs.get("memory", defaults["memory"].default)
    hidden_size = policy_kwargs.get("hidden_size", defaults["hidden_size"].default)
    critic = policy_kwargs.get("critic", defaults["critic"].default)
    memory_kwargs = policy_kwargs.get("memory_kwargs")
    n_steps = hyperparams.get("n_steps", inspect.signature(RecurrentPPO.__init__).parameters["n_steps"].default)
    if memory not in MEMORY_NAMES:
        raise ZooInputError(f"policy_kwargs memory={memory!r} is unknown; accepted: {', '.join(MEMORY_NAMES)}")
    if critic not in CRITIC_MODES:
        raise ZooInputError(f"policy_kwargs critic={critic!r} is unknown; accepted: {', '.join(CRITIC_MODES)}")
    try:  # this project's validators, on the user's values: their ValueError names the value
        check_int("policy_kwargs hidden_size", hidden_size)
        check_int("n_envs", n_envs)
        check_int("n_steps", n_steps)
        try:
            memory_kwargs = {} if memory_kwargs is None else memory_kwargs
            if memory == "fastweights" and isinstance(memory_kwargs, dict):  # an old YAML's normalize, as the policy
                memory_kwargs = translate_legacy_options(memory_kwargs)
            resolved = check_memory_kwargs(memory, memory_kwargs, hidden_size)
        except ValueError as error:
            raise ValueError(f"policy_kwargs: {error}") from None
        check_memory(observation, memory, hidden_size, resolved, n_envs, n_steps, separate_critic=critic == "separate",
                     flags=("n_envs", "n_steps", "policy_kwargs hidden_size"))  # fmt: skip
    except ValueError as error:
        raise ZooInputError(str(error)) from None


# ---------------------------------------------------------------------------------- enjoy
def _runs_in(folder: str) -> list[str]:
    """The ``<env>_<N>`` run folders directly in ``folder``, sorted."""
    paths = glob.glob(os.path.join(glob.escape(folder), "*_[0-9]*"))
    return sorted(os.path.basename(path) for path in paths if os.path.isdir(path))


def checked_model_path(
    exp_id: int, folder: str, algo: str, env_name: Any, *args: Any, **kwargs: Any
) -> tuple[str, str, str]:  # fmt: skip
    """``rl_zoo3.utils.get_model_path``, its failures named in one line, and the model it finds
    read (a readable zip whose members pass their CRC check and which holds SB3's ``data``) before
    ``enjoy`` builds its env; the zoo's failures kept for its ``rl-trained-agents`` folder, on which
    it downloads the model from the hub.

    :raises ZooInputError: No ``<folder>/<algo>`` folder, no run of ``env_name`` in it, no model
        file in the run, or a model file that is not a readable SB3 zip.
    """
    try:
        name, model_path, log_path = zoo_utils.get_model_path(exp_id, folder, algo, env_name, *args, **kwargs)
    except (AssertionError, ValueError) as error:
        if "rl-trained-agents" in folder:
            raise  # the zoo downloads the model then
        algo_folder = os.path.join(folder, algo)
        if not os.path.isdir(folder):
            raise ZooInputError(f"-f {folder}: no such folder; give the -f 'train' wrote its runs to") from None
        if not os.path.isdir(algo_folder):
            held = ", ".join(sorted(name for name in os.listdir(folder) if name in zoo_enjoy.ALGOS)) or "none"
            raise ZooInputError(f"-f {folder} holds no {algo} runs (no {algo_folder} folder; runs of: {held}); "
                                f"check --algo and -f") from None  # fmt: skip
        runs = _runs_in(algo_folder)
        if exp_id == 0 and not any(run.rsplit("_", 1)[0] == str(env_name) for run in runs):
            held = ", ".join(runs) or "none"
            raise ZooInputError(f"no {algo} run on {env_name} in {algo_folder} (it holds: {held}); check --env, "
                                f"--algo and -f") from None  # fmt: skip
        message = " ".join(str(error).split())
        raise ZooInputError(f"{message[:1].lower()}{message[1:]}; choose the run with --exp-id N, its best model with "
                            f"--load-best, a checkpoint with --load-checkpoint STEPS") from None  # fmt: skip
    try:
        read_model_data(model_path)
        with zipfile.ZipFile(model_path) as archive:
            broken = archive.testzip()
    except ValueError as error:  # read_model_data's one line, naming the file
        raise ZooInputError(str(error)) from None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:  # a member zipfile cannot even inflate
        raise ZooInputError(f"cannot read model {model_path!r}: {type(error).__name__}: {error} (damaged?)") from None
    if broken is not None:
        raise ZooInputError(f"cannot read model {model_path!r}: its member {broken} fails its CRC check (damaged?)")
    return name, model_path, log_path


@contextlib.contextmanager
def checked_enjoy() -> Iterator[None]:
    """Run the zoo's ``enjoy`` inside: its model path found by :func:`checked_model_path`."""
    with mock.patch.object(zoo_enjoy, "get_model_path", checked_model_path):
        yield
