"""Checks a training run passes before it writes anything: the env can be made and trained,
and the run fits in memory (the agents' rollouts, :func:`check_memory`; the supervised
tasks' models, :func:`check_model_memory`).

Each failure is a ``ValueError`` with one line naming the value and what would work
(the commands print it and exit 2), instead of a traceback from deep inside Gymnasium,
SB3 or the allocator, or the kernel's OOM killer halfway through a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from torch import nn

#: Spaces Stable-Baselines3's recurrent PPO takes (observations may also be a Dict of them).
OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
#: Share of the machine's memory a run may plan to use.
MEMORY_SHARE = 0.8


def probe_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> tuple[spaces.Space, spaces.Space]:
    """Make one ``env_id`` env (with ``env_kwargs``) and return its observation and action spaces.

    :raises ValueError: The env cannot be made (a missing optional dependency, bad
        arguments) or its spaces cannot be trained by SB3's recurrent PPO.
    """
    try:
        env = gym.make(env_id, **(env_kwargs or {}))
    except gym.error.DependencyNotInstalled as error:
        raise ValueError(f"cannot make env {env_id!r}: {error}") from None
    except Exception as error:  # noqa: BLE001 - an env's own constructor may raise anything
        raise ValueError(f"cannot make env {env_id!r}: {type(error).__name__}: {error}") from None
    try:
        observation, action = env.observation_space, env.action_space
    finally:
        env.close()
    parts = observation.spaces.values() if isinstance(observation, spaces.Dict) else [observation]
    if not all(isinstance(part, OBSERVATION_SPACES) for part in parts):
        accepted = ", ".join(kind.__name__ for kind in OBSERVATION_SPACES)
        raise ValueError(
            f"env {env_id!r} observes {observation}, which SB3's recurrent PPO cannot take; "
            f"accepted: {accepted}, or a Dict of them (wrap the env, e.g. gymnasium.wrappers.FlattenObservation)"
        )
    if not isinstance(action, ACTION_SPACES):
        accepted = ", ".join(kind.__name__ for kind in ACTION_SPACES)
        raise ValueError(f"env {env_id!r} acts in {action}, which SB3's recurrent PPO cannot take; accepted: {accepted}")
    return observation, action


def check_memory(
    observation: spaces.Space, memory: str, hidden_size: int, memory_kwargs: dict[str, Any], n_envs: int, n_steps: int,
    separate_critic: bool = False, flags: tuple[str, str, str] = ("--n-envs", "--n-steps", "--hidden-size"),
) -> int:  # fmt: skip
    """Raise unless the run's largest allocations fit in :data:`MEMORY_SHARE` of this machine's memory.

    Counted, in float32: the rollout buffer (per step and env: the observation and the core's
    state for the actor and, with a separate critic or a ``Dict`` observation space, whose stock
    buffer always keeps both copies, the critic), the envs' observations, each env's live state
    of every core twice (before and after a step), and the core's parameters with Adam's two
    moments. (``--n-envs`` is bounded too, :data:`fw_agents.config.MAX_N_ENVS`.) The core is built on the ``meta`` device: its
    sizes are known without allocating it.

    :param flags: What sets ``n_envs``, ``n_steps`` and ``hidden_size``, for the message
        (the zoo's are hyper-parameters).
    :return: The estimate, in bytes.
    :raises ValueError: Naming the sizes and the estimate against the machine's memory.
    """
    from fw_agents.memory import make_memory

    with torch.device("meta"):
        core = make_memory(memory, max(spaces.flatdim(observation), 1), hidden_size, **memory_kwargs)
    cores = 2 if separate_critic else 1
    # FastRecurrentPPO's compact buffer stores the critic's state only when it has its own core;
    # Dict spaces keep sb3-contrib's RecurrentDictRolloutBuffer, which always stores both.
    stored = 2 if separate_critic or isinstance(observation, spaces.Dict) else 1
    per_step = spaces.flatdim(observation) + stored * core.state_size + 8  # + actions, rewards, values, ...
    parameters = cores * sum(p.numel() for p in core.parameters())
    live_states = 2 * cores * n_envs * core.state_size  # the state a step reads and the one it returns
    needed = 4 * (n_envs * n_steps * per_step + n_envs * spaces.flatdim(observation) + live_states + 3 * parameters)
    envs_flag, steps_flag, hidden_flag = flags
    sizes = f"{envs_flag} {n_envs} x {steps_flag} {n_steps} steps of {per_step} floats, {hidden_flag} {hidden_size}"
    return check_fits(needed, sizes)


def check_model_memory(
    build_model: Callable[[], nn.Module], batch_size: int, sequence_length: int, sizes: str,
    device: torch.device | str = "cpu",
) -> int:  # fmt: skip
    """Raise unless training the model ``build_model`` makes fits in :data:`MEMORY_SHARE` of
    ``device``'s memory (the supervised task commands' preflight).

    Counted, in float32: the parameters with their gradients and Adam's two moments, and, for a
    model whose ``core`` is a memory core, the core's state at every step of every sequence of
    the batch (kept for backpropagation through time). A lower bound: the activations around
    the core are not counted. The model is built on the ``meta`` device: its sizes are known
    without allocating it, and a bad option of the core raises its own ``ValueError``.

    :param build_model: Builds the model the run trains.
    :param batch_size: Sequences per update.
    :param sequence_length: Steps per sequence.
    :param sizes: The flags that set these sizes, for the message (``"--hidden 20, --batch-size 128"``).
    :param device: Where the run computes: a CUDA device's own memory is counted, else this machine's.
    :return: The estimate, in bytes.
    :raises ValueError: Naming ``sizes`` and the estimate against the memory.
    """
    from fw_agents.memory import MemoryCore

    with torch.device("meta"):
        model = build_model()
    parameters = sum(p.numel() for p in model.parameters())
    core = getattr(model, "core", None)
    states = batch_size * sequence_length * core.state_size if isinstance(core, MemoryCore) else 0
    return check_fits(4 * (4 * parameters + states), f"{sizes}: {parameters:,} parameters", device)


def check_fits(needed: int, sizes: str, device: torch.device | str = "cpu") -> int:
    """Raise unless ``needed`` bytes fit in :data:`MEMORY_SHARE` of ``device``'s memory (a CUDA
    device's own, else this machine's or its container's).

    :param needed: The run's estimate, in bytes.
    :param sizes: The flags that set it, for the message.
    :param device: Where the run computes.
    :return: ``needed``.
    :raises ValueError: One line: the estimate, ``sizes`` and the memory available.
    """
    device = torch.device(device)
    if device.type == "cuda":
        available, where = torch.cuda.get_device_properties(device).total_memory, f"{device}'s"
    else:
        available, where = _physical_memory(), "this machine's"
    if available and needed > MEMORY_SHARE * available:
        raise ValueError(
            f"this run needs about {needed / 2**30:.1f} GiB ({sizes}), more than {MEMORY_SHARE:.0%} of "
            f"{where} {available / 2**30:.1f} GiB; lower them"
        )
    return needed


#: Where a container's memory limit is read (cgroup v2, then v1).
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _physical_memory() -> int | None:
    """The machine's memory, or the container's limit (cgroup) when that is lower: what the
    OOM killer goes by."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        physical = None
    for path in CGROUP_LIMIT_FILES:
        try:
            with open(path) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:  # "max": no limit
            limit = int(text)
            return limit if physical is None else min(physical, limit)
    return physical

