"""Checks a training run passes before it writes anything: the env can be made and trained,
and the run fits in memory.

Each failure is a ``ValueError`` with one line naming the value and what would work
(the commands print it and exit 2), instead of a traceback from deep inside Gymnasium,
SB3 or the allocator, or the kernel's OOM killer halfway through a run.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces

#: Spaces Stable-Baselines3's recurrent PPO takes (observations may also be a Dict of them).
OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
#: Share of the machine's memory a run may plan to use.
MEMORY_SHARE = 0.8


def probe_env(env_id: str) -> tuple[spaces.Space, spaces.Space]:
    """Make one ``env_id`` env and return its observation and action spaces.

    :raises ValueError: The env cannot be made (a missing optional dependency, bad
        arguments) or its spaces cannot be trained by SB3's recurrent PPO.
    """
    try:
        env = gym.make(env_id)
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
    separate_critic: bool = False,
) -> int:  # fmt: skip
    """Raise unless the run's largest allocations fit in :data:`MEMORY_SHARE` of this machine's memory.

    Counted, in float32: the rollout buffer (per step and env: the observation and the core's
    state for the actor and, with a separate critic or a ``Dict`` observation space, whose stock
    buffer always keeps both copies, the critic), the envs' observations, each env's live state
    of every core twice (before and after a step), and the core's parameters with Adam's two
    moments. (``--n-envs`` is bounded too, :data:`fw_agents.config.MAX_N_ENVS`.) The core is built on the ``meta`` device: its
    sizes are known without allocating it.

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
    available = _physical_memory()
    if available and needed > MEMORY_SHARE * available:
        raise ValueError(
            f"this run needs about {needed / 2**30:.1f} GiB (--n-envs {n_envs} x --n-steps {n_steps} steps of "
            f"{per_step} floats, --hidden-size {hidden_size}), more than {MEMORY_SHARE:.0%} of this machine's "
            f"{available / 2**30:.1f} GiB; lower them"
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

