"""A batched numpy engine that plays many Catch games at once, game for game identical to ``CatchEnv``.

:class:`CatchBatch` holds the state of ``num_games`` games in flat numpy arrays and knows the
rules (through :mod:`envs.core`); it knows nothing of Gymnasium's or SB3's vector APIs, which
:mod:`envs.vector` and :mod:`envs.sb3` build on top of it (autoreset conventions, infos).

Seeding: exact *and* fast
-------------------------
Game ``i`` owns its own ``np.random.Generator``, created exactly as ``CatchEnv.reset(seed=s)``
creates ``self.np_random`` (``gymnasium.utils.seeding.np_random(s)``). A single env draws all the
randomness of an episode when it starts: ``d = config.draws_per_episode`` doubles (ball column,
paddle start and, with flicker, the visibility of each of the N frames) with one
``Generator.random(d)`` call. ``Generator.random`` turns each 64-bit output of the bit generator
into exactly one double, so one call ``random(K * d)`` yields the same numbers as ``K`` calls
``random(d)``. The engine therefore keeps, per game, a pool of the next ``K`` episodes' draws
and refills a game's pool with a single call when it runs dry. Games that restart together
(which is the common case: all Catch episodes last N frames) take their draws with one fancy
index, and the Python loop over per-game generators runs once every ``K`` episodes instead of
at every restart. The result is bit-identical to running ``num_games`` single envs seeded
``seed, seed + 1, ...`` (the convention of Gymnasium's ``SyncVectorEnv`` and SB3's ``VecEnv.seed``).

Flicker needs one random number per frame; drawing the whole episode's pattern at its start
keeps the stream layout fixed (exactly ``d`` doubles per episode, however the episode ends), so
the same pool serves it and a step needs no random numbers at all.

Observations: a step computes no screens, only per-game pixel indices (the ball's index moves by
one row per step). :meth:`CatchBatch.observe` then writes ``paddle_width + 1`` pixels per game into
a freshly zeroed ``(num_games, N, N)`` float32 array. At 4,096 games, zeroing a new array took about
half the time of copying out a screen buffer kept up to date in place, and handing out that buffer
itself was no faster (erasing the old pixels costs about as much as zeroing), so every observation
is a new array that callers may keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium.utils import seeding

from envs.core import CatchConfig, columns_from_uniform, render_ansi, render_rgb
from fw_agents.validation import check_int

#: Per-game pool size, in doubles, aimed at by :class:`CatchBatch` (rounded to whole episodes).
POOL_DOUBLES = 512


class CatchBatch:
    """The state and dynamics of ``num_games`` Catch games.

    :param num_games: number of games (>= 1).
    :param config: the games' parameters (shared by all games).
    :param pool_episodes: episodes of random draws fetched per game and per generator call;
        ``None`` picks about :data:`POOL_DOUBLES` doubles' worth. Any value gives the same games.
    """

    def __init__(self, num_games: int, config: CatchConfig, pool_episodes: int | None = None) -> None:
        num_games = check_int("num_envs", num_games)
        self.config = config
        self.num_games = num_games
        n = config.size
        self._n = n
        self._width = config.paddle_width
        self._max_paddle = config.num_paddle_positions - 1
        self._shown = config.visible_frames()
        self._blanks = self._shown < n or config.flickers

        d = config.draws_per_episode
        if pool_episodes is None:
            pool_episodes = max(4, POOL_DOUBLES // d)
        pool_episodes = check_int("pool_episodes", pool_episodes)
        self._draws = d
        self._pool_episodes = pool_episodes
        self._pool = np.zeros((num_games, pool_episodes, d), dtype=np.float64)
        self._next = np.full(num_games, pool_episodes, dtype=np.int64)  # == K: pool empty
        self._rngs: list[np.random.Generator | None] = [None] * num_games
        #: The seed each game's generator was created from (``None`` until it exists).
        self.seeds: list[int | None] = [None] * num_games

        self.ball = np.zeros(num_games, dtype=np.int64)
        self.paddle = np.zeros(num_games, dtype=np.int64)
        #: Frame number of each game, 1..N (0 before the first restart).
        self.frame = np.zeros(num_games, dtype=np.int64)
        self._flicker_visible = np.ones((num_games, n), dtype=bool) if config.flickers else None
        self._all = np.arange(num_games, dtype=np.int64)
        self._screen_base = self._all * (n * n)
        self._bottom_row = self._screen_base + (n - 1) * n
        self._frame_base = self._all * n - 1  # + frame = index of the frame in _flicker_visible.ravel()
        #: Flat index of each game's ball pixel in a (num_games, N, N) array.
        self._ball_px = self._screen_base.copy()
        # new paddle position = _moves[3 * paddle + action]: the clipped move as one table look-up
        positions = np.arange(self._max_paddle + 1)
        self._moves = np.clip(positions[:, None] + np.arange(3)[None, :] - 1, 0, self._max_paddle).ravel()

    # ------------------------------------------------------------------ seeding
    def seed(self, seeds: Sequence[int | None]) -> None:
        """(Re)create the generators of the games whose seed is not ``None``.

        Takes effect at the games' next restart, like ``CatchEnv.reset(seed=...)`` does.

        :param seeds: one entry per game; ``None`` keeps the game's generator (or creates one
            from fresh entropy when it has none yet).
        """
        if len(seeds) != self.num_games:
            raise ValueError(f"expected {self.num_games} seeds (one per game), got {len(seeds)}")
        for g, s in enumerate(seeds):
            if s is not None:
                self._rngs[g], self.seeds[g] = seeding.np_random(s)
                self._next[g] = self._pool_episodes

    def _take_draws(self, idx: np.ndarray) -> np.ndarray:
        """Return the next episode's draws of games ``idx`` as a ``(len(idx), d)`` array."""
        nxt = self._next[idx]
        empty = idx[nxt >= self._pool_episodes]
        if empty.size:
            for g in empty.tolist():
                rng = self._rngs[g]
                if rng is None:
                    rng, self.seeds[g] = seeding.np_random(None)
                    self._rngs[g] = rng
                rng.random(out=self._pool[g].reshape(-1))
            self._next[empty] = 0
            nxt = self._next[idx]
        self._next[idx] = nxt + 1
        return self._pool[idx, nxt]

    # ------------------------------------------------------------------ dynamics
    def restart(self, idx: np.ndarray | None = None) -> None:
        """Start new episodes (frame 1) in games ``idx`` (all when ``None``)."""
        idx = self._all if idx is None else np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return
        cfg = self.config
        u = self._take_draws(idx)
        ball = columns_from_uniform(u[:, 0], self._n)
        self.ball[idx] = ball
        self._ball_px[idx] = self._screen_base[idx] + ball
        if cfg.center_paddle:
            self.paddle[idx] = cfg.center_position
        else:
            self.paddle[idx] = columns_from_uniform(u[:, 1], self._max_paddle + 1)
        self.frame[idx] = 1
        if self._flicker_visible is not None:
            self._flicker_visible[idx] = u[:, 2:] >= cfg.flicker_prob

    def step(
        self, actions: np.ndarray, restart: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance every game by one step (call :meth:`observe` for the new frames).

        :param actions: validated ``int64`` array of shape ``(num_games,)`` with values in {0, 1, 2}.
        :param restart: optional bool mask of games that start a new episode instead of stepping
            (their action is ignored, their reward is 0 and they are not terminated).
        :return: ``(rewards float64, terminated bool, caught bool)``; ``caught`` is true only for
            games that terminated with the ball under the paddle.
        """
        moves = self.paddle * 3
        moves += actions
        paddle = self._moves.take(moves)
        self.paddle = paddle
        self.frame += 1
        self._ball_px += self._n
        terminated = self.frame == self._n
        if restart is not None:
            idx = np.flatnonzero(restart)
            self.restart(idx)
            terminated[idx] = False
        if terminated.any():
            caught = (self.ball >= paddle) & (self.ball < paddle + self._width)
            caught &= terminated
            rewards = terminated.astype(np.float64)
            rewards[terminated & ~caught] = -1.0
        else:
            caught = np.zeros(self.num_games, dtype=bool)
            rewards = np.zeros(self.num_games, dtype=np.float64)
        return rewards, terminated, caught

    def visible(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Whether the current frame of games ``idx`` (all when ``None``) shows the screen."""
        frame = self.frame if idx is None else self.frame[idx]
        vis = frame <= self._shown
        if self._flicker_visible is not None:
            base = self._frame_base if idx is None else self._frame_base[idx]
            vis &= self._flicker_visible.ravel().take(base + np.maximum(frame, 1))
        return vis

    def _pixels(self, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | float | None]:
        """Flat pixel indices (ball, paddle's left pixel) of games ``idx`` and the value to paint.

        The value is ``1.0`` when every frame is visible, ``None`` when none is, else a float32 array.
        """
        if idx is None:
            ball_px = self._ball_px
            paddle_px = self._bottom_row + self.paddle
        else:
            ball_px = self._ball_px[idx]
            paddle_px = self._bottom_row[idx] + self.paddle[idx]
        if not self._blanks:
            return ball_px, paddle_px, 1.0
        vis = self.visible(idx)
        if vis.all():
            return ball_px, paddle_px, 1.0
        if not vis.any():
            return ball_px, paddle_px, None
        return ball_px, paddle_px, vis.astype(np.float32)

    def _paint(self, flat: np.ndarray, ball_px: np.ndarray, paddle_px: np.ndarray, value: np.ndarray | float) -> None:
        flat[ball_px] = value
        flat[paddle_px] = value
        for k in range(1, self._width):
            flat[paddle_px + k] = value

    def observe(self) -> np.ndarray:
        """Return the current frames of all games as a new ``(num_games, N, N)`` float32 array."""
        obs = np.zeros((self.num_games, self._n, self._n), dtype=np.float32)
        ball_px, paddle_px, value = self._pixels(None)
        if value is not None:
            self._paint(obs.reshape(-1), ball_px, paddle_px, value)
        return obs

    def observe_games(self, idx: np.ndarray) -> np.ndarray:
        """Return the current frames of games ``idx`` as a new ``(len(idx), N, N)`` float32 array."""
        obs = np.zeros((len(idx), self._n, self._n), dtype=np.float32)
        ball_px, paddle_px, value = self._pixels(idx)
        if value is not None:
            shift = np.arange(len(idx), dtype=np.int64) * (self._n * self._n) - self._screen_base[idx]
            self._paint(obs.reshape(-1), ball_px + shift, paddle_px + shift, value)
        return obs

    # ------------------------------------------------------------------ rendering
    def render_game(self, g: int, mode: str) -> np.ndarray | str:
        """Render game ``g``'s true state in ``mode`` (``"rgb_array"`` or ``"ansi"``), as ``CatchEnv`` does."""
        frame = int(self.frame[g])
        if frame == 0:
            raise RuntimeError("render() called before reset()")
        vis = bool(self.visible(np.array([g]))[0])
        if mode == "rgb_array":
            return render_rgb(self.config, frame - 1, int(self.ball[g]), int(self.paddle[g]), vis)
        return render_ansi(self.config, frame, int(self.ball[g]), int(self.paddle[g]), vis)


def check_actions(actions: object, num_games: int) -> np.ndarray:
    """Validate a batch of actions and return it as a contiguous ``int64`` array.

    :param actions: array-like of shape ``(num_games,)`` with integer values in {0, 1, 2}.
    :raises ValueError: naming the bad shape, dtype or value (and the game it belongs to).
    """
    a = actions if type(actions) is np.ndarray else np.asarray(actions)
    if a.shape != (num_games,):
        raise ValueError(
            f"actions must be an integer array of shape ({num_games},) with values in {{0, 1, 2}} "
            f"(0 left, 1 stay, 2 right), got shape {a.shape}"
        )
    if a.dtype.kind not in "iu":
        raise ValueError(
            f"actions must be integers in {{0, 1, 2}} (0 left, 1 stay, 2 right), got dtype {a.dtype}"
            f" (first value {a.flat[0]!r}); cast them explicitly if that is what you mean"
        )
    if a.dtype != np.int64 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.int64)
    if (a.view(np.uint64) > 2).any():  # negatives wrap to huge unsigned values
        g = int(np.flatnonzero((a < 0) | (a > 2))[0])
        raise ValueError(
            f"actions must be in {{0, 1, 2}} (0 left, 1 stay, 2 right), got {int(a[g])} for game {g}"
        )
    return a
