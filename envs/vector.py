"""``CatchGymnasiumVectorEnv``: many Catch games as one Gymnasium ``VectorEnv`` (pure numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import logger, spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.batch import CatchBatch, check_actions
from envs.core import RENDER_MODES, CatchConfig, check_render_mode, renamed_names


class CatchGymnasiumVectorEnv(VectorEnv):
    """``num_envs`` Catch games stepped together in numpy, with Gymnasium's ``VectorEnv`` API.

    Same games as ``num_envs`` :class:`envs.catch.CatchEnv` in a ``gymnasium.vector.SyncVectorEnv``
    (same observations, rewards, terminations, infos and autoreset behaviour, and the same games
    for the same seeds: ``reset(seed=s)`` seeds game ``i`` with ``s + i``), but one to two orders
    of magnitude faster; see :mod:`envs.batch` for how per-game seeding stays exact.
    ``gymnasium.make_vec("Catch-v0", num_envs=...)`` builds one (it is the registered
    ``vector_entry_point`` of every Catch id).

    Every observation array is new (never written to again), like ``SyncVectorEnv(copy=True)``.

    Spaces: ``observation_space`` is ``Box(0, 1, (num_envs, N, N), float32)``, ``action_space``
    is ``MultiDiscrete([3] * num_envs)``; actions must be an integer array of shape
    ``(num_envs,)`` with values in {0, 1, 2} (anything else raises ``ValueError``).

    Infos: on a step where some games end, ``info["caught"]`` (bool) with mask
    ``info["_caught"]``, as ``SyncVectorEnv`` aggregates the single env's info. With
    ``autoreset_mode=SAME_STEP`` they are under ``info["final_info"]`` and the last frames under
    ``info["final_obs"]`` (an object array), again as ``SyncVectorEnv`` does.

    :param num_envs: number of games.
    :param size: N, the screen side and frames per episode (see :class:`envs.catch.CatchEnv`).
    :param blank_after: M, frames after the M-th are blank (``None``: never).
    :param paddle_width: paddle width in pixels.
    :param render_mode: ``None``, ``"rgb_array"`` or ``"ansi"``; ``render()`` returns one frame per game.
    :param flicker_prob: probability that each frame is blanked.
    :param center_paddle: start paddles centred instead of at random.
    :param autoreset_mode: ``AutoresetMode.NEXT_STEP`` (Gymnasium's default: the step after an
        episode's last one returns the next episode's first frame, ignores that game's action and
        gives reward 0), ``SAME_STEP`` or ``DISABLED`` (reset finished games yourself with
        ``reset(options={"reset_mask": mask})``); the strings ``"NextStep"`` etc. work too.
    """

    def __init__(
        self,
        num_envs: int = 1,
        size: int = 16,
        blank_after: int | None = None,
        paddle_width: int = 2,
        render_mode: str | None = None,
        flicker_prob: float = 0.0,
        center_paddle: bool = False,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    ) -> None:
        config = CatchConfig(
            size=size,
            blank_after=blank_after,
            paddle_width=paddle_width,
            flicker_prob=flicker_prob,
            center_paddle=center_paddle,
        )
        self.render_mode = check_render_mode(render_mode)
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(
                f"autoreset_mode must be one of {[m.value for m in AutoresetMode]} or an AutoresetMode, "
                f"got {autoreset_mode!r}"
            ) from None
        self._batch = CatchBatch(num_envs, config)
        self.config = config
        self.num_envs = self._batch.num_games
        self.metadata = {"render_modes": list(RENDER_MODES), "render_fps": 8, "autoreset_mode": self.autoreset_mode}

        n = config.size
        self.single_observation_space = spaces.Box(0.0, 1.0, shape=(n, n), dtype=np.float32)
        self.single_action_space = spaces.Discrete(3)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        self._needs_reset = np.zeros(self.num_envs, dtype=bool)  # game ended at the last step
        self._started = False

    @property
    def np_random_seed(self) -> tuple[int | None, ...]:
        """The seed of each game's generator (``None`` for games not yet reset)."""
        return tuple(self._batch.seeds)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes in all games (or those of ``options["reset_mask"]``).

        :param seed: ``None`` (continue each game's generator), an int ``s`` (game ``i`` gets
            ``s + i``) or a list with one seed or ``None`` per game.
        :param options: ``{"reset_mask": bool array of shape (num_envs,)}`` resets only those games.
        :return: the observations of all games and an empty info dict.
        """
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(n)]
        elif isinstance(seed, (list, tuple, np.ndarray)):
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"seed must be None, an int or a list of {n} seeds, got a list of length {len(seeds)}")
        else:
            raise ValueError(f"seed must be None, an int or a list of {n} seeds, got {seed!r}")

        mask = None if options is None else options.get("reset_mask")
        if mask is None:
            self._batch.seed(seeds)
            self._batch.restart()
            self._needs_reset[:] = False
        else:
            mask = np.asarray(mask)
            if mask.shape != (n,) or mask.dtype != np.bool_:
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({n},), "
                    f"got dtype {mask.dtype} and shape {mask.shape}"
                )
            if not self._started and not mask.all():
                raise ValueError("the first reset must reset every game; omit options['reset_mask']")
            self._batch.seed([s if m else None for s, m in zip(seeds, mask.tolist())])
            self._batch.restart(np.flatnonzero(mask))
            self._needs_reset[mask] = False
        self._started = True
        return self._observations(), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every game; see the class docstring for autoreset and infos.

        :param actions: integer array of shape ``(num_envs,)``, values in {0, 1, 2}.
        :return: ``(observations, rewards float64, terminations, truncations (all False), infos)``.
        """
        if not self._started:
            raise RuntimeError("CatchGymnasiumVectorEnv.step() called before reset()")
        acts = check_actions(actions, self.num_envs)
        batch = self._batch
        mode = self.autoreset_mode
        restart = None
        if self._needs_reset.any():
            if mode == AutoresetMode.DISABLED:
                games = np.flatnonzero(self._needs_reset)[:10].tolist()
                raise RuntimeError(
                    f"games {games} have ended and autoreset_mode is DISABLED; reset them with "
                    "reset(options={'reset_mask': mask}) before stepping"
                )
            if mode == AutoresetMode.NEXT_STEP:
                restart = self._needs_reset

        rewards, terminated, caught = batch.step(acts, restart)
        infos: dict[str, Any] = {}
        if terminated.any():
            ended = {"caught": caught, "_caught": terminated.copy()}
            if mode == AutoresetMode.SAME_STEP:
                idx = np.flatnonzero(terminated)
                last_frames = batch.observe_games(idx)
                final_obs = np.full(self.num_envs, None, dtype=object)
                for j, g in enumerate(idx.tolist()):
                    final_obs[g] = last_frames[j]
                batch.restart(idx)
                infos = {
                    "final_obs": final_obs,
                    "_final_obs": terminated.copy(),
                    "final_info": ended,
                    "_final_info": terminated.copy(),
                }
            else:
                infos = ended
        if mode != AutoresetMode.SAME_STEP:  # in SAME_STEP mode finished games were restarted above
            self._needs_reset = terminated.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        return self._observations(), rewards, terminated, truncated, infos

    def _observations(self) -> np.ndarray:
        return self._batch.observe()

    def render(self) -> tuple[np.ndarray | str, ...] | None:
        """Render every game's true state (a tuple with one frame per game), as ``SyncVectorEnv`` does."""
        if self.render_mode is None:
            logger.warn("CatchGymnasiumVectorEnv.render() was called without a render_mode; pass render_mode at construction.")
            return None
        if not self._started:
            raise RuntimeError("CatchGymnasiumVectorEnv.render() called before reset()")
        return tuple(self._batch.render_game(g, self.render_mode) for g in range(self.num_envs))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"CatchGymnasiumVectorEnv(num_envs={self.num_envs}, size={c.size}, blank_after={c.blank_after}, "
            f"paddle_width={c.paddle_width}, flicker_prob={c.flicker_prob}, center_paddle={c.center_paddle})"
        )


__getattr__ = renamed_names("envs.vector", {"CatchVectorEnv": ("CatchGymnasiumVectorEnv", lambda: CatchGymnasiumVectorEnv)})
