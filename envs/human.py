"""A pygame window for ``render_mode="human"`` (Gymnasium's convention: the env draws itself
after every ``reset`` and ``step``, at the env's ``render_fps``).

pygame is optional (``pip install "fw-agents[human]"``); it is imported when the first
window opens, so every other render mode, and ``import envs``, work without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.error import DependencyNotInstalled


class HumanWindow:
    """Shows RGB frames in a window, one per call, paced to ``fps``.

    :param title: The window's caption.
    :param fps: Frames per second (the env's ``metadata["render_fps"]``).
    """

    def __init__(self, title: str, fps: int) -> None:
        self.title = title
        self.fps = fps
        self._pygame: Any = None
        self._screen: Any = None
        self._clock: Any = None

    def show(self, rgb: np.ndarray) -> None:
        """Draw ``rgb`` (``[height, width, 3]`` uint8) and wait out the rest of the frame's time."""
        if self._screen is None:
            self._open(rgb.shape[1], rgb.shape[0])
        pygame = self._pygame
        pygame.event.pump()  # keeps the window responsive
        pygame.surfarray.blit_array(self._screen, np.ascontiguousarray(rgb.transpose(1, 0, 2)))
        pygame.display.flip()
        self._clock.tick(self.fps)

    def close(self) -> None:
        """Close the window (a no-op when none is open)."""
        if self._screen is not None:
            self._pygame.display.quit()
            self._pygame.quit()
            self._screen = None

    def _open(self, width: int, height: int) -> None:
        try:
            import pygame
        except ImportError:
            raise DependencyNotInstalled(
                'render_mode="human" needs pygame, which is not installed: pip install "fw-agents[human]"'
            ) from None
        pygame.init()
        pygame.display.init()
        pygame.display.set_caption(self.title)
        self._pygame = pygame
        self._screen = pygame.display.set_mode((width, height))
        self._clock = pygame.time.Clock()
