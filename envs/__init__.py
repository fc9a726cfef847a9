"""Catch, the partially observable game of Ba, Hinton et al. (2016), as Gymnasium environments.

``import envs`` registers the ids below with Gymnasium (pure numpy + gymnasium; no torch):

=====================  ====  ===========  ============  ==========================================
id                     N     blank_after  flicker_prob  what it tests
=====================  ====  ===========  ============  ==========================================
``Catch-v0``           16    None         0             fully observable
``CatchBlind16-v0``    16    3            0             the paper's memory task (N=16, M=3)
``CatchBlind24-v0``    24    5            0             the paper's harder memory task (N=24, M=5)
``CatchFlicker16-v0``  16    None         0.5           each frame blanked with probability 0.5
``CatchFlicker24-v0``  24    None         0.5           each frame blanked with probability 0.5
=====================  ====  ===========  ============  ==========================================

Every id accepts the :class:`envs.catch.CatchEnv` arguments as overrides, e.g.
``gymnasium.make("Catch-v0", size=24, blank_after=5)``, and has :class:`envs.vector.CatchGymnasiumVectorEnv`
as its ``vector_entry_point``, so ``gymnasium.make_vec("CatchBlind16-v0", num_envs=1024)`` is the
fast batched version. Without importing anything, ``gymnasium.make("envs:Catch-v0")`` imports this
package first. :func:`register_envs` is also suitable as a ``gymnasium.envs`` plugin entry point
for the Gymnasium versions that load those (0.26 to 0.29; 1.x removed plugin loading).

For Stable-Baselines3, ``envs.CatchSB3VecEnv`` (defined in :mod:`envs.sb3`, imported on first use
because it pulls in SB3 and torch) is a batched ``VecEnv``. Each batched class's name says
whose vector API it implements; the 0.1 names ``CatchVectorEnv`` and ``CatchVecEnv`` still
work, with a ``DeprecationWarning``.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from envs.catch import CatchEnv
from envs.core import CatchConfig, renamed_names
from envs.vector import CatchGymnasiumVectorEnv

__all__ = ["CATCH_IDS", "CatchConfig", "CatchEnv", "CatchGymnasiumVectorEnv", "CatchSB3VecEnv", "register_envs"]

#: The registered ids and their keyword arguments.
CATCH_IDS: dict[str, dict[str, Any]] = {
    "Catch-v0": {"size": 16},
    "CatchBlind16-v0": {"size": 16, "blank_after": 3},
    "CatchBlind24-v0": {"size": 24, "blank_after": 5},
    "CatchFlicker16-v0": {"size": 16, "flicker_prob": 0.5},
    "CatchFlicker24-v0": {"size": 24, "flicker_prob": 0.5},
}


def register_envs() -> None:
    """Register the Catch ids with Gymnasium; ids already registered are left as they are.

    Called by ``import envs``; safe to call again (e.g. from a plugin loader).
    """
    for env_id, kwargs in CATCH_IDS.items():
        if env_id in registry:
            continue
        register(
            id=env_id,
            entry_point="envs.catch:CatchEnv",
            vector_entry_point="envs.vector:CatchGymnasiumVectorEnv",
            kwargs=dict(kwargs),
        )


def _sb3_vec_env() -> Any:
    # Lazy so that ``import envs`` stays free of SB3 (and therefore of torch).
    from envs.sb3 import CatchSB3VecEnv

    return CatchSB3VecEnv


_renamed = renamed_names(
    "envs",
    {
        "CatchVectorEnv": ("CatchGymnasiumVectorEnv", lambda: CatchGymnasiumVectorEnv),
        "CatchVecEnv": ("CatchSB3VecEnv", _sb3_vec_env),
    },
)


def __getattr__(name: str) -> Any:
    if name == "CatchSB3VecEnv":
        return _sb3_vec_env()
    return _renamed(name)


register_envs()
