"""Catch: a ball falls down an N x N screen and a paddle must catch it (Ba, Hinton et al., 2016, §5)."""

from __future__ import annotations

import operator
from typing import Any, SupportsFloat

import numpy as np
from gymnasium import Env, logger, spaces

from envs.core import (
    RENDER_MODES,
    CatchConfig,
    check_render_mode,
    episode_start,
    render_ansi,
    render_rgb,
)
from envs.human import HumanWindow

#: The single env's render modes: the shared ones and a window.
CATCH_RENDER_MODES = ("human", *RENDER_MODES)


class CatchEnv(Env[np.ndarray, int]):
    """
    ## Description

    The partially observable Catch game of "Using Fast Weights to Attend to the Recent Past"
    (Ba, Hinton, Mnih, Leibo & Ionescu, NIPS 2016, section 5). The screen is N x N binary pixels.
    A one-pixel ball appears in a uniformly random column of the top row and falls one row per
    step; a paddle ``paddle_width`` pixels wide moves along the bottom row. The episode lasts
    exactly N frames (N - 1 actions) and ends when the ball reaches the bottom row.

    With ``blank_after=M`` every frame after the M-th is all zeros, so an agent has to remember
    where the ball was (the paper's variants: N=16, M=3 and N=24, M=5). With ``flicker_prob=p``
    each frame is independently replaced by zeros with probability p (the "flickering" kind of
    partial observability of Hausknecht & Stone's flickering Atari).

    ## Action Space

    ``Discrete(3)``:

    | Num | Action                       |
    |-----|------------------------------|
    | 0   | move the paddle left by one  |
    | 1   | stay                         |
    | 2   | move the paddle right by one |

    The paddle stays on the screen: moving into a wall leaves it where it is. Anything that is
    not an integer in {0, 1, 2} (a float, an out-of-range integer) raises ``ValueError``; actions
    are never clipped silently.

    ## Observation Space

    ``Box(0, 1, (N, N), float32)``: the screen, row 0 at the top. The ball is one pixel with value
    1 in row ``frame - 1``; the paddle is ``paddle_width`` pixels with value 1 in row N - 1 (on the
    last frame the ball may overlap the paddle). A blanked frame is all zeros.

    Each returned observation is a fresh view that the env never writes to again, so keeping it
    (e.g. in a replay buffer) is safe.

    ## Rewards

    0 on every step except the last; on the last step +1 if the ball's column is under the paddle
    (caught) and -1 otherwise. The return of an episode is therefore +1 or -1.

    ## Starting State

    ``reset`` returns frame 1: the ball in the top row in a column drawn uniformly from
    ``0 .. N-1``; the paddle's left pixel in a column drawn uniformly from ``0 .. N - paddle_width``
    or, with ``center_paddle=True``, at column ``(N - paddle_width) // 2``. Every episode draws
    exactly ``2 (+ N with flicker)`` doubles from ``self.np_random`` when it starts (the flicker
    pattern of the whole episode is drawn up front), which is what lets the batched
    :class:`envs.vector.CatchGymnasiumVectorEnv` reproduce this env game for game.

    ## Episode End

    The episode terminates when the ball reaches the bottom row: after N - 1 steps, on frame N.
    ``info["caught"]`` (bool) is given on that last step. There is no truncation. Calling
    ``step`` after the end (or before the first ``reset``) raises ``RuntimeError``.

    ## Arguments

    ```python
    import gymnasium as gym
    import envs  # registers the ids (or use gym.make("envs:Catch-v0"))
    env = gym.make("Catch-v0", size=24, blank_after=5, render_mode="rgb_array")
    ```

    * ``size`` (int, default 16): N, the screen side and the number of frames; >= 3.
    * ``blank_after`` (int | None, default None): M; frames after the M-th are zeros; >= 1.
    * ``paddle_width`` (int, default 2): paddle width in pixels; 1 <= paddle_width <= size.
    * ``render_mode`` (str | None): ``"rgb_array"`` (``(16 N, 16 N, 3)`` uint8 image of the true
      state; ball and paddle are dark grey on frames the agent sees blank), ``"ansi"`` (text) or
      ``"human"`` (that image in a pygame window after every ``reset`` and ``step``, at
      ``render_fps``; needs ``pip install "fw-agents[human]"``).
    * ``flicker_prob`` (float, default 0): probability that a frame is blanked; 0 <= p < 1.
    * ``center_paddle`` (bool, default False): start the paddle centred instead of at random.

    Bad arguments raise ``ValueError`` naming the value and the accepted ones.

    ## Variants

    | id                    | size | blank_after | flicker_prob |
    |-----------------------|------|-------------|--------------|
    | ``Catch-v0``          | 16   | None        | 0            |
    | ``CatchBlind16-v0``   | 16   | 3           | 0            |
    | ``CatchBlind24-v0``   | 24   | 5           | 0            |
    | ``CatchFlicker16-v0`` | 16   | None        | 0.5          |
    | ``CatchFlicker24-v0`` | 24   | None        | 0.5          |

    Every id takes the arguments above as overrides and has :class:`envs.vector.CatchGymnasiumVectorEnv`
    as its ``vector_entry_point`` (``gymnasium.make_vec(id, num_envs=...)``).

    Memory matters on the blind variants: remembering the ball's column wins every episode,
    whereas no memoryless policy (even a stochastic one) wins more than 45.0% of the episodes of
    ``CatchBlind16-v0`` or 44.6% of ``CatchBlind24-v0``, the rate of chasing the ball while it is
    visible and then standing still (the bound is derived and checked in ``tests/test_catch.py``).

    ## Version History

    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": list(CATCH_RENDER_MODES), "render_fps": 8}

    def __init__(
        self,
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
        self.render_mode = check_render_mode(render_mode, CATCH_RENDER_MODES)
        self._window = HumanWindow("Catch", self.metadata["render_fps"]) if render_mode == "human" else None
        n = self.config.size
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n, n), dtype=np.float32)
        self.action_space = spaces.Discrete(3)

        # Hot-path copies of the configuration.
        self._n = n
        self._width = self.config.paddle_width
        self._max_paddle = self.config.num_paddle_positions - 1
        self._draws = self.config.draws_per_episode
        # Episode state; frame 0 means "no episode yet", frame N means "over".
        self._frame = 0
        self._ball = 0
        self._paddle = 0
        self._visible: list[bool] = []
        self._film = np.zeros((0, n, n), dtype=np.float32)

    # Read-only views of the configuration, e.g. for ``env.unwrapped.size``.
    @property
    def size(self) -> int:
        """N: screen side and number of frames per episode."""
        return self.config.size

    @property
    def blank_after(self) -> int | None:
        """M: frames after the M-th are blank (``None``: never)."""
        return self.config.blank_after

    @property
    def paddle_width(self) -> int:
        """Paddle width in pixels."""
        return self.config.paddle_width

    @property
    def flicker_prob(self) -> float:
        """Probability that a frame is blanked at random."""
        return self.config.flicker_prob

    @property
    def center_paddle(self) -> bool:
        """Whether the paddle starts centred."""
        return self.config.center_paddle

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode and return frame 1 and an empty info dict.

        :param seed: seeds ``self.np_random`` (reproducible episodes); ``None`` continues its stream.
        :param options: unused.
        """
        super().reset(seed=seed)
        self._ball, self._paddle, self._visible = episode_start(self.config, self.np_random.random(self._draws))
        self._frame = 1
        # One "film" per episode: frame t is written once, at step t - 1, and never touched
        # again, so observations handed out stay valid without a per-step copy.
        self._film = np.zeros((self._n, self._n, self._n), dtype=np.float32)
        obs = self._film[0]
        if self._visible[0]:
            obs[0, self._ball] = 1.0
            obs[self._n - 1, self._paddle : self._paddle + self._width] = 1.0
        if self._window is not None:
            self.render()
        return obs, {}

    def step(self, action: int) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Move the paddle, let the ball fall one row and return the next frame.

        :param action: 0 (left), 1 (stay) or 2 (right); any integer type, no floats.
        :return: ``(frame, reward, terminated, truncated=False, info)``; ``info["caught"]`` on the last step.
        :raises ValueError: if ``action`` is not an integer in {0, 1, 2}.
        :raises RuntimeError: if no episode is running.
        """
        try:
            move = operator.index(action) - 1
        except TypeError:
            raise ValueError(
                f"action must be an integer in {{0, 1, 2}} (0 left, 1 stay, 2 right), got {action!r}"
                f" of type {type(action).__name__}"
            ) from None
        if move < -1 or move > 1:
            raise ValueError(f"action must be an integer in {{0, 1, 2}} (0 left, 1 stay, 2 right), got {action!r}")
        frame = self._frame
        n = self._n
        if frame == 0 or frame >= n:
            raise RuntimeError("CatchEnv.step() called without a running episode; call reset() first")

        paddle = self._paddle + move
        if paddle < 0:
            paddle = 0
        elif paddle > self._max_paddle:
            paddle = self._max_paddle
        self._paddle = paddle
        self._frame = frame + 1  # the ball is now in row `frame`
        obs = self._film[frame]
        if self._visible[frame]:
            obs[frame, self._ball] = 1.0
            obs[n - 1, paddle : paddle + self._width] = 1.0
        if self._window is not None:
            self.render()
        if frame + 1 < n:
            return obs, 0.0, False, False, {}
        caught = paddle <= self._ball < paddle + self._width
        return obs, (1.0 if caught else -1.0), True, False, {"caught": caught}

    def render(self) -> np.ndarray | str | None:
        """Render the true state of the current frame (see the class docstring for the modes)."""
        if self.render_mode is None:
            logger.warn(
                "CatchEnv.render() was called without a render_mode; pass render_mode='rgb_array' or 'ansi' "
                "when constructing the env (e.g. gymnasium.make('Catch-v0', render_mode='rgb_array'))."
            )
            return None
        if self._frame == 0:
            raise RuntimeError("CatchEnv.render() called before reset()")
        visible = self._visible[self._frame - 1]
        if self.render_mode == "ansi":
            return render_ansi(self.config, self._frame, self._ball, self._paddle, visible)
        rgb = render_rgb(self.config, self._frame - 1, self._ball, self._paddle, visible)
        if self._window is None:
            return rgb
        self._window.show(rgb)
        return None

    def close(self) -> None:
        """Close the ``"human"`` window, if one is open."""
        if self._window is not None:
            self._window.close()
        super().close()
