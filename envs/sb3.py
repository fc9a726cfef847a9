"""``CatchSB3VecEnv``: many Catch games as one Stable-Baselines3 ``VecEnv``.

This is the only module of :mod:`envs` that imports Stable-Baselines3 (and, through it, torch);
``import envs`` does not import it. Use ``from envs.sb3 import CatchSB3VecEnv`` (or ``envs.CatchSB3VecEnv``,
which loads this module on first access).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from envs.batch import CatchBatch, check_actions
from envs.catch import CatchEnv
from envs.core import CatchConfig, check_render_mode, renamed_names

_CONFIG_FIELDS = ("size", "blank_after", "paddle_width", "flicker_prob", "center_paddle")


class CatchSB3VecEnv(VecEnv):
    """``num_envs`` Catch games stepped together in numpy, as an SB3 ``VecEnv``.

    A drop-in, much faster replacement for ``DummyVecEnv([lambda: CatchEnv(...)] * num_envs)``
    with identical outputs: same-step autoreset (``step`` returns the next episode's first frame
    for games that just ended), ``dones``, and for ended games ``infos[i]`` holds ``"caught"``,
    ``"terminal_observation"`` and ``"TimeLimit.truncated"`` (always ``False``: Catch never
    truncates); every other ``infos[i]`` is ``{"TimeLimit.truncated": False}``. ``seed(s)``
    seeds game ``i`` with ``s + i`` at the next ``reset()``, so the games match the
    ``DummyVecEnv``'s game for game. Wrap it in ``VecMonitor`` for episode statistics.

    :param num_envs: number of games.
    :param size: N, the screen side and frames per episode (see :class:`envs.catch.CatchEnv`).
    :param blank_after: M, frames after the M-th are blank (``None``: never).
    :param paddle_width: paddle width in pixels.
    :param render_mode: ``None``, ``"rgb_array"`` (``render()`` tiles the games' images) or ``"ansi"``.
    :param flicker_prob: probability that each frame is blanked.
    :param center_paddle: start paddles centred instead of at random.
    """

    def __init__(
        self,
        num_envs: int,
        size: int = 16,
        blank_after: int | None = None,
        paddle_width: int = 2,
        render_mode: str | None = None,
        flicker_prob: float = 0.0,
        center_paddle: bool = False,
    ) -> None:
        self.config = CatchConfig(
            size=size,
            blank_after=blank_after,
            paddle_width=paddle_width,
            flicker_prob=flicker_prob,
            center_paddle=center_paddle,
        )
        self.render_mode = check_render_mode(render_mode)  # read back by VecEnv.__init__ via get_attr
        self._batch = CatchBatch(num_envs, self.config)
        n = self.config.size
        super().__init__(
            self._batch.num_games,
            spaces.Box(0.0, 1.0, shape=(n, n), dtype=np.float32),
            spaces.Discrete(3),
        )
        self._actions: np.ndarray | None = None
        self._started = False

    @classmethod
    def from_id(cls, env_id: str, num_envs: int, **kwargs: Any) -> CatchSB3VecEnv:
        """Build one from a registered id, e.g. ``CatchSB3VecEnv.from_id("CatchBlind16-v0", 64)``.

        :param env_id: a Gymnasium id whose entry point is :class:`envs.catch.CatchEnv`.
        :param num_envs: number of games.
        :param kwargs: overrides of the id's keyword arguments (``size``, ``render_mode``, ...).
        """
        spec = gym.spec(env_id)
        if spec.entry_point not in (CatchEnv, "envs.catch:CatchEnv"):
            raise ValueError(f"{env_id!r} is not a Catch id (its entry point is {spec.entry_point!r})")
        return cls(num_envs, **{**spec.kwargs, **kwargs})

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> VecEnvObs:
        """Start new episodes in all games, using the seeds set by :meth:`seed` (then forgotten)."""
        self._batch.seed(self._seeds)
        self._batch.restart()
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._started = True
        return self._batch.observe()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions (integer array of shape ``(num_envs,)``, values in {0, 1, 2}) for :meth:`step_wait`."""
        self._actions = check_actions(actions, self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        """Step every game; games that end are restarted in the same call."""
        if not self._started:
            raise RuntimeError("CatchSB3VecEnv.step() called before reset()")
        if self._actions is None:
            raise RuntimeError("CatchSB3VecEnv.step_wait() called without step_async()")
        batch = self._batch
        rewards, dones, caught = batch.step(self._actions)
        self._actions = None
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": False} for _ in range(self.num_envs)]
        if dones.any():
            idx = np.flatnonzero(dones)
            last_frames = batch.observe_games(idx)
            for j, g in enumerate(idx.tolist()):
                infos[g] = {
                    "caught": bool(caught[g]),
                    "TimeLimit.truncated": False,
                    "terminal_observation": last_frames[j],
                }
                self.reset_infos[g] = {}
            batch.restart(idx)
        return batch.observe(), rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        """Nothing to release."""

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One RGB image per game (``render_mode="rgb_array"`` only)."""
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        return [self._render(g) for g in range(self.num_envs)]

    def _render(self, g: int) -> np.ndarray | str | None:
        if self.render_mode is None:
            return None
        return self._batch.render_game(g, self.render_mode)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Per-game attributes: configuration fields, ``render_mode``, single-game spaces, ``np_random_seed``."""
        targets = list(self._get_indices(indices))
        if attr_name in _CONFIG_FIELDS:
            return [getattr(self.config, attr_name)] * len(targets)
        if attr_name in ("render_mode", "observation_space", "action_space", "config"):
            return [getattr(self, attr_name)] * len(targets)
        if attr_name == "np_random_seed":
            return [self._batch.seeds[g] for g in targets]
        raise AttributeError(
            f"CatchSB3VecEnv games have no attribute {attr_name!r}; available: "
            f"{[*_CONFIG_FIELDS, 'render_mode', 'observation_space', 'action_space', 'config', 'np_random_seed']}"
        )

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Not supported: the games share one configuration; build a new ``CatchSB3VecEnv`` instead."""
        raise AttributeError(
            f"cannot set {attr_name!r}: CatchSB3VecEnv games are numpy arrays sharing one configuration; "
            "build a new CatchSB3VecEnv instead"
        )

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Supports ``"render"`` (one frame per game) and ``"get_wrapper_attr"`` (as :meth:`get_attr`)."""
        targets = list(self._get_indices(indices))
        if method_name == "render":
            return [self._render(g) for g in targets]
        if method_name == "get_wrapper_attr":
            return self.get_attr(*method_args, indices=targets)
        raise AttributeError(
            f"CatchSB3VecEnv does not support env_method({method_name!r}); supported: ['render', 'get_wrapper_attr']"
        )

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """The games are not ``gymnasium.Env`` objects, so none is wrapped."""
        return [False] * len(list(self._get_indices(indices)))


__getattr__ = renamed_names("envs.sb3", {"CatchVecEnv": ("CatchSB3VecEnv", lambda: CatchSB3VecEnv)})
