"""The rules of Catch shared by the single env and the batched engine.

Everything here is pure Python + numpy and is used by both :class:`envs.catch.CatchEnv`
and :class:`envs.batch.CatchBatch`, so the two implementations cannot drift apart:

* :class:`CatchConfig` validates the game's parameters once, with errors that name the bad
  value and the accepted ones.
* The episode's randomness: every episode consumes exactly :attr:`CatchConfig.draws_per_episode`
  doubles from the game's ``np.random.Generator`` (``Generator.random``), all drawn when the
  episode starts. :func:`episode_start` turns them into the ball column, the paddle start and the
  per-frame visibility, and :func:`columns_from_uniform` is its array twin.
* Rendering of one game's state to an RGB image or to text.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fw_agents.validation import check_bool, check_float, check_int

#: Actions of ``Discrete(3)``: index -> paddle displacement in pixels.
ACTION_MEANINGS: tuple[str, str, str] = ("left", "stay", "right")
#: Render modes every Catch implementation supports (the single env adds ``"human"``).
RENDER_MODES: tuple[str, str] = ("rgb_array", "ansi")
#: Side of one screen pixel in the ``"rgb_array"`` image, in image pixels.
CELL_PIXELS = 16

_VISIBLE_GREY = 255  # ball and paddle while the agent sees them
_HIDDEN_GREY = 80  # ball and paddle on a frame that the agent sees blank


def check_render_mode(render_mode: str | None, modes: tuple[str, ...] = RENDER_MODES) -> str | None:
    """Return ``render_mode`` if it is ``None`` or one of ``modes``, else raise ``ValueError``."""
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {list(modes)}, got {render_mode!r}")
    return render_mode


@dataclass(frozen=True)
class CatchConfig:
    """The validated parameters of one Catch game (see :class:`envs.catch.CatchEnv` for their meaning).

    :param size: N, the side of the square screen and the number of frames per episode (>= 3).
    :param blank_after: M, frames after the M-th are all zeros; ``None`` never blanks (>= 1).
    :param paddle_width: width of the paddle in pixels (1 <= paddle_width <= size).
    :param flicker_prob: probability that each frame is independently blanked (0 <= p < 1).
    :param center_paddle: start the paddle at column ``(size - paddle_width) // 2`` instead of
        a uniformly random column.
    :raises ValueError: naming the bad value and the accepted range.
    """

    size: int = 16
    blank_after: int | None = None
    paddle_width: int = 2
    flicker_prob: float = 0.0
    center_paddle: bool = False

    def __post_init__(self) -> None:
        size = check_int("size", self.size, low=3)
        paddle_width = check_int("paddle_width", self.paddle_width, 1, size)  # the paddle fits on the screen
        blank_after = None if self.blank_after is None else check_int("blank_after", self.blank_after, low=1)
        flicker_prob = check_float("flicker_prob", self.flicker_prob, 0.0, 1.0, low_inclusive=True)
        center_paddle = check_bool("center_paddle", self.center_paddle)
        # Normalise numpy scalars to Python scalars (the dataclass is frozen).
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "paddle_width", paddle_width)
        object.__setattr__(self, "blank_after", blank_after)
        object.__setattr__(self, "flicker_prob", flicker_prob)
        object.__setattr__(self, "center_paddle", center_paddle)

    @property
    def num_paddle_positions(self) -> int:
        """Number of columns the paddle's left pixel can occupy: ``size - paddle_width + 1``."""
        return self.size - self.paddle_width + 1

    @property
    def center_position(self) -> int:
        """The paddle's left column when ``center_paddle=True``."""
        return (self.size - self.paddle_width) // 2

    @property
    def flickers(self) -> bool:
        """Whether frames are blanked at random."""
        return self.flicker_prob > 0.0

    @property
    def draws_per_episode(self) -> int:
        """Doubles drawn from the game's generator when an episode starts.

        Two (ball column, paddle start; the second is drawn even with ``center_paddle`` so that
        the stream does not depend on it) plus, with flicker, one per frame.
        """
        return 2 + (self.size if self.flickers else 0)

    def visible_frames(self) -> int:
        """Number of leading frames not blanked by ``blank_after`` (``size`` when it is ``None``)."""
        return self.size if self.blank_after is None else min(self.blank_after, self.size)


def column_from_uniform(u: float, n: int) -> int:
    """Map a double ``u`` in [0, 1) to a column in ``range(n)``: ``floor(u * n)``, guarded against rounding up.

    ``u`` is a multiple of 2**-53, so each column's probability is 1/n to within n * 2**-53.
    """
    c = int(u * n)
    return c if c < n else n - 1


def columns_from_uniform(u: np.ndarray, n: int) -> np.ndarray:
    """Array twin of :func:`column_from_uniform` (bit-identical results), returns ``int64``."""
    return np.minimum((u * n).astype(np.int64), n - 1)


def episode_start(config: CatchConfig, draws: np.ndarray) -> tuple[int, int, list[bool]]:
    """Turn one episode's draws into ``(ball_column, paddle_left, visible)``.

    :param config: the game's parameters.
    :param draws: ``config.draws_per_episode`` doubles in [0, 1).
    :return: the ball's column, the paddle's left column and, for frames ``1..size``, whether the
        frame shows the screen (``False``: the observation is all zeros).
    """
    ball = column_from_uniform(float(draws[0]), config.size)
    if config.center_paddle:
        paddle = config.center_position
    else:
        paddle = column_from_uniform(float(draws[1]), config.num_paddle_positions)
    shown = config.visible_frames()
    visible = [t < shown for t in range(config.size)]
    if config.flickers:
        p = config.flicker_prob
        visible = [v and float(u) >= p for v, u in zip(visible, draws[2:])]
    return ball, paddle, visible


def render_rgb(
    config: CatchConfig, ball_row: int, ball_col: int, paddle: int, visible: bool, cell: int = CELL_PIXELS
) -> np.ndarray:
    """Render one game's true state as an RGB image.

    The ball and the paddle are white when the agent sees the frame and dark grey when its
    observation is blank, so a video shows what happens while the agent is blind.

    :return: ``uint8`` array of shape ``(size * cell, size * cell, 3)``.
    """
    n = config.size
    grid = np.zeros((n, n), dtype=np.uint8)
    grey = _VISIBLE_GREY if visible else _HIDDEN_GREY
    grid[n - 1, paddle : paddle + config.paddle_width] = grey
    grid[ball_row, ball_col] = grey
    image = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)
    return np.repeat(image[:, :, None], 3, axis=2)


def render_ansi(config: CatchConfig, frame: int, ball_col: int, paddle: int, visible: bool) -> str:
    """Render one game's true state as text: ``o`` ball, ``=`` paddle, ``.`` empty, plus a status line."""
    n = config.size
    rows = [["."] * n for _ in range(n)]
    for c in range(paddle, paddle + config.paddle_width):
        rows[n - 1][c] = "="
    rows[frame - 1][ball_col] = "o"
    status = f"frame {frame}/{n}" + ("" if visible else " (blank to the agent)")
    return "\n".join("".join(r) for r in rows) + "\n" + status + "\n"



def renamed_names(module: str, renames: dict[str, tuple[str, Callable[[], Any]]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that keeps old names working with a ``DeprecationWarning``.

    :param module: The module's name, for the messages.
    :param renames: ``old name -> (new name, loader of the object)``.
    """

    def __getattr__(name: str) -> Any:
        if name not in renames:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, load = renames[name]
        warnings.warn(f"{module}.{name} was renamed {module}.{new}", DeprecationWarning, stacklevel=2)
        return load()

    return __getattr__
