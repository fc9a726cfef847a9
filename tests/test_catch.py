"""Tests of the single Catch env (``envs.catch.CatchEnv``) and of its registration."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from importlib.metadata import EntryPoint

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.catch import CatchEnv

# ---------------------------------------------------------------------------- helpers


def ball_and_paddle(obs: np.ndarray, width: int = 2) -> tuple[int, int, int]:
    """Read ``(ball_row, ball_col, paddle_left)`` off a visible frame (fails if the frame is malformed)."""
    n = obs.shape[0]
    assert set(np.unique(obs)) <= {0.0, 1.0}
    bottom = np.flatnonzero(obs[n - 1])
    above = np.argwhere(obs[: n - 1])
    if len(above) == 1:  # ball above the bottom row
        (row, col), paddle = above[0], int(bottom[0])
        assert bottom.tolist() == list(range(paddle, paddle + width))
        return int(row), int(col), paddle
    # last frame: the ball is in the bottom row, on the paddle (width pixels) or beside it (width + 1)
    assert len(above) == 0 and len(bottom) in (width, width + 1), obs
    raise AssertionError("ambiguous bottom-row frame; use the env's state instead")


def follow_action(ball_col: int, paddle: int, width: int = 2) -> int:
    """Move the paddle towards the ball's column."""
    if ball_col < paddle:
        return 0
    if ball_col > paddle + width - 1:
        return 2
    return 1


def random_policy_win_rate(size: int, width: int = 2) -> float:
    """Exact win probability of uniformly random actions, by propagating the paddle's distribution."""
    positions = size - width + 1
    move = np.zeros((positions, positions))
    for p in range(positions):
        for d in (-1, 0, 1):
            move[p, min(max(p + d, 0), positions - 1)] += 1 / 3
    final = np.linalg.matrix_power(move, size - 1)  # [start, end] after N - 1 actions
    cols = np.arange(size)
    covers = (cols[None, :] >= np.arange(positions)[:, None]) & (cols[None, :] < np.arange(positions)[:, None] + width)
    return float((final @ covers).mean())  # uniform start paddle and ball column


def best_memoryless_bound(size: int, blank_after: int, width: int = 2) -> float:
    """Upper bound on the win rate of any memoryless (even stochastic) policy when frames after M are blank.

    On frames 1..M the observation shows everything, so the policy can steer the paddle to any
    column within M of its start. On the blank frames the observation is always the same zero
    frame, so the remaining K = N - 1 - M actions are drawn from one fixed distribution,
    independently of the ball. Whatever the draws, the K clipped moves map the paddle's position
    p to clip(p + a, lo, hi) for some shift a and bounds lo <= hi; conditioning on the draws, the
    win rate is at most that of the best such map chosen *knowing* the draws. So the maximum over
    all maps clip(p + a, lo, hi) of the fraction of (start, ball) pairs a full-information steerer
    can win bounds every memoryless policy.
    """
    positions = size - width + 1
    k = size - 1 - blank_after
    p = np.arange(positions)
    maps = np.array(
        [np.clip(p + a, lo, hi) for a in range(-k, k + 1) for lo in range(positions) for hi in range(lo, positions)]
    )  # [map, position at frame M+1] -> final position
    cols = np.arange(size)
    covers = (cols[None, None, :] >= maps[:, :, None]) & (cols[None, None, :] < maps[:, :, None] + width)
    reach = (np.abs(p[:, None] - p[None, :]) <= blank_after).astype(np.float64)  # [start, position at M+1]
    wins = np.matmul(reach[None], covers.astype(np.float64)) > 0  # [map, start, ball]
    return float(wins.mean(axis=(1, 2)).max())


def play(env: gym.Env, policy, episodes: int, seed: int) -> list[float]:
    """Play ``episodes`` episodes with ``policy(obs, memory) -> action`` and return the returns."""
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed if e == 0 else None)
        memory: dict = {}
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs, memory))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def memory_policy(obs: np.ndarray, memory: dict) -> int:
    """Remember the ball's column and dead-reckon the paddle from its own actions."""
    if obs.any() and "ball" not in memory:
        _, memory["ball"], memory["paddle"] = ball_and_paddle(obs)
    action = follow_action(memory["ball"], memory["paddle"])
    memory["paddle"] = min(max(memory["paddle"] + action - 1, 0), obs.shape[0] - 2)
    return action


def memoryless_policy(obs: np.ndarray, memory: dict) -> int:
    """The best memoryless policy: chase the ball while it is visible, stay on blank frames."""
    if not obs.any():
        return 1
    _, ball, paddle = ball_and_paddle(obs)
    return follow_action(ball, paddle)


# ---------------------------------------------------------------------------- dynamics


@pytest.mark.parametrize("size", [3, 5, 16, 24])
def test_ball_falls_one_row_per_step_and_episode_ends_at_frame_n(size: int) -> None:
    env = CatchEnv(size=size)
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        assert info == {}
        assert obs.shape == (size, size) and obs.dtype == np.float32
        row, col, paddle = ball_and_paddle(obs)
        assert row == 0
        frames = 1
        rng = np.random.default_rng(seed)
        while True:
            action = int(rng.integers(3))
            obs, reward, terminated, truncated, info = env.step(action)
            frames += 1
            assert truncated is False
            expected_paddle = min(max(paddle + action - 1, 0), size - 2)
            if frames < size:
                assert (terminated, reward, info) == (False, 0.0, {})
                r, c, paddle = ball_and_paddle(obs)
                assert (r, c) == (frames - 1, col), "the ball falls straight down one row per step"
                assert paddle == expected_paddle
            else:
                assert terminated is True
                caught = expected_paddle <= col < expected_paddle + 2
                assert info == {"caught": caught}
                assert reward == (1.0 if caught else -1.0)
                expected = np.zeros((size, size), dtype=np.float32)
                expected[size - 1, expected_paddle : expected_paddle + 2] = 1.0
                expected[size - 1, col] = 1.0
                np.testing.assert_array_equal(obs, expected)
                break
        assert frames == size, "an episode is exactly N frames (N - 1 actions)"
        with pytest.raises(RuntimeError, match="reset"):
            env.step(1)


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        CatchEnv().step(1)


def test_paddle_stays_on_screen() -> None:
    env = CatchEnv(size=8, paddle_width=3)
    env.reset(seed=0)
    for _ in range(7):
        obs, *_ = env.step(0)
    assert obs[7, :3].tolist() == [1.0, 1.0, 1.0] and env.unwrapped._paddle == 0
    env.reset(seed=0)
    for _ in range(7):
        env.step(2)
    assert env.unwrapped._paddle == 8 - 3


def test_center_paddle() -> None:
    for size, width in [(16, 2), (7, 2), (9, 3)]:
        env = CatchEnv(size=size, paddle_width=width, center_paddle=True)
        for seed in range(5):
            obs, _ = env.reset(seed=seed)
            left = (size - width) // 2
            assert np.flatnonzero(obs[size - 1]).tolist() == list(range(left, left + width))


def test_reward_only_at_end_and_plus_minus_one() -> None:
    env = gym.make("Catch-v0")
    rng = np.random.default_rng(0)
    finals = []
    for e in range(200):
        env.reset(seed=e)
        rewards = []
        done = False
        while not done:
            _, r, term, trunc, info = env.step(int(rng.integers(3)))
            rewards.append(r)
            done = term or trunc
        assert rewards[:-1] == [0.0] * 14 and len(rewards) == 15
        assert rewards[-1] == (1.0 if info["caught"] else -1.0)
        finals.append(rewards[-1])
    assert set(finals) == {1.0, -1.0}


def test_observations_are_not_modified_afterwards() -> None:
    env = CatchEnv(size=6)
    obs, _ = env.reset(seed=0)
    kept, copies = [obs], [obs.copy()]
    for _ in range(12):  # runs over into the next episodes
        obs, _, term, _, _ = env.step(2)
        kept.append(obs)
        copies.append(obs.copy())
        if term:
            obs, _ = env.reset()
            kept.append(obs)
            copies.append(obs.copy())
    for k, c in zip(kept, copies):
        np.testing.assert_array_equal(k, c)


# ---------------------------------------------------------------------------- policies


def test_ball_following_policy_wins_every_episode_on_catch_v0() -> None:
    env = gym.make("Catch-v0")

    def follow(obs: np.ndarray, memory: dict) -> int:
        _, ball, paddle = ball_and_paddle(obs)
        return follow_action(ball, paddle)

    assert play(env, follow, 300, seed=0) == [1.0] * 300


@pytest.mark.parametrize("env_id, size, blank_after", [("CatchBlind16-v0", 16, 3), ("CatchBlind24-v0", 24, 5)])
def test_blind_variants_blank_after_m(env_id: str, size: int, blank_after: int) -> None:
    env = gym.make(env_id)
    assert env.unwrapped.size == size and env.unwrapped.blank_after == blank_after
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        frames = [obs]
        done = False
        while not done:
            obs, _, done, _, _ = env.step(1)
            frames.append(obs)
        assert len(frames) == size
        for t, frame in enumerate(frames, start=1):
            if t <= blank_after:
                row, _, _ = ball_and_paddle(frame)
                assert row == t - 1
            else:
                assert not frame.any(), f"frame {t} > M={blank_after} must be blank"


@pytest.mark.parametrize(
    "env_id, size, blank_after, bound", [("CatchBlind16-v0", 16, 3, 0.45), ("CatchBlind24-v0", 24, 5, 0.4457)]
)
def test_memory_wins_every_episode_where_no_memoryless_policy_can(
    env_id: str, size: int, blank_after: int, bound: float
) -> None:
    env = gym.make(env_id)
    assert play(env, memory_policy, 300, seed=1) == [1.0] * 300

    # No memoryless policy, even stochastic, wins more than the bound ...
    upper = best_memoryless_bound(size, blank_after)
    assert upper == pytest.approx(bound, abs=1e-4) and upper < 0.5
    # ... and chasing the ball while visible then staying attains it: it wins exactly the
    # episodes whose ball column the paddle can reach within the M visible actions.
    positions = size - 1
    starts = [(p, c) for p in range(positions) for c in range(size)]
    reachable = [max(p - c, c - (p + 1), 0) <= blank_after for p, c in starts]
    assert np.mean(reachable) == pytest.approx(upper, abs=1e-12)
    for e in range(200):
        obs, _ = env.reset(seed=1000 + e)
        _, ball, paddle = ball_and_paddle(obs)
        memory: dict = {}
        done = False
        while not done:
            obs, reward, done, _, _ = env.step(memoryless_policy(obs, memory))
        assert (reward == 1.0) == (max(paddle - ball, ball - (paddle + 1), 0) <= blank_after)


def test_random_policy_win_rate_matches_analytic_value() -> None:
    expected = random_policy_win_rate(16)
    assert 0.1 < expected < 0.3
    env = CatchEnv(size=16)
    rng = np.random.default_rng(123)
    episodes, wins = 3000, 0
    env.reset(seed=7)
    for _ in range(episodes):
        done = False
        while not done:
            _, reward, done, _, _ = env.step(int(rng.integers(3)))
        wins += reward > 0
        env.reset()
    sigma = math.sqrt(expected * (1 - expected) / episodes)
    assert abs(wins / episodes - expected) < 4 * sigma, (wins / episodes, expected)


def test_flicker_blanks_each_frame_with_probability_p() -> None:
    p, size = 0.3, 10
    env = CatchEnv(size=size, flicker_prob=p)
    blank = total = 0
    for seed in range(400):
        obs, _ = env.reset(seed=seed)
        col = env._ball
        frames = [obs]
        done = False
        while not done:
            obs, _, done, _, _ = env.step(1)
            frames.append(obs)
        for t, frame in enumerate(frames[:-1], start=1):
            total += 1
            if frame.any():
                assert ball_and_paddle(frame)[:2] == (t - 1, col)
            else:
                blank += 1
    sigma = math.sqrt(p * (1 - p) / total)
    assert abs(blank / total - p) < 4 * sigma
    for env_id in ("CatchFlicker16-v0", "CatchFlicker24-v0"):
        assert gym.make(env_id).unwrapped.flicker_prob == 0.5


# ---------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("kwargs", [{}, {"flicker_prob": 0.5}, {"blank_after": 2, "size": 5}])
def test_seeding_is_reproducible(kwargs: dict) -> None:
    def trajectory(env: CatchEnv, seed: int) -> list[np.ndarray]:
        out = [env.reset(seed=seed)[0]]
        for e in range(4):  # the later episodes come from the continued generator
            done = False
            while not done:
                obs, _, done, _, _ = env.step(e % 3)
                out.append(obs)
            out.append(env.reset()[0])
        return out

    a = trajectory(CatchEnv(**kwargs), 42)
    b = trajectory(CatchEnv(**kwargs), 42)
    c = trajectory(CatchEnv(**kwargs), 43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_starting_state_is_uniform() -> None:
    env = CatchEnv(size=8)
    env.reset(seed=0)
    balls, paddles = np.zeros(8), np.zeros(7)
    for _ in range(7000):
        env.reset()
        balls[env._ball] += 1
        paddles[env._paddle] += 1
    for counts in (balls, paddles):
        expected = counts.sum() / len(counts)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 30, counts  # far beyond the 0.999 quantile for <= 7 degrees of freedom (24.3)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("action", [3, -1, 1.0, 1.5, "1", None, np.array([1]), np.float32(2)])
def test_bad_actions_raise(action) -> None:
    env = CatchEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\{0, 1, 2\}") as excinfo:
        env.step(action)
    assert repr(action) in str(excinfo.value)


@pytest.mark.parametrize("action", [0, 2, np.int64(1), np.uint8(2), np.array(1)])
def test_integer_actions_of_any_type_are_accepted(action) -> None:
    env = CatchEnv()
    env.reset(seed=0)
    env.step(action)


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"size": 2}, "2"),
        ({"size": 16.0}, "16.0"),
        ({"paddle_width": 17}, "17"),
        ({"paddle_width": 6, "size": 5}, "6"),
        ({"paddle_width": 0}, "0"),
        ({"blank_after": 0}, "0"),
        ({"blank_after": -3}, "-3"),
        ({"flicker_prob": 1.0}, "1.0"),
        ({"flicker_prob": -0.1}, "-0.1"),
        ({"flicker_prob": float("nan")}, "nan"),
        ({"render_mode": "window"}, "'window'"),
        ({"center_paddle": "yes"}, "'yes'"),
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_the_value(kwargs: dict, shown: str) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError) as excinfo:
        CatchEnv(**kwargs)
    message = str(excinfo.value)
    assert name in message and shown in message, message


# ---------------------------------------------------------------------------- checkers, rendering


@pytest.mark.parametrize("env_id", list(envs.CATCH_IDS))
def test_gymnasium_check_env(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(env_id).unwrapped)
        check_env(gym.make(env_id, render_mode="rgb_array").unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", ["Catch-v0", "CatchBlind16-v0", "CatchFlicker24-v0"])
def test_sb3_check_env(env_id: str) -> None:
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(env_id).unwrapped, warn=True)
    # The only remark: a 2-D observation is neither an image nor a vector (MlpPolicy flattens it).
    assert all("unconventional shape" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_passive_checker_is_silent_through_gym_make() -> None:
    env = gym.make("CatchBlind16-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.reset(seed=0)
        for _ in range(15):
            env.step(env.action_space.sample())


def test_render_rgb_array() -> None:
    env = gym.make("Catch-v0", size=10, blank_after=2, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8
    ball, paddle = env.unwrapped._ball, env.unwrapped._paddle
    assert (frame[:16, 16 * ball : 16 * ball + 16] == 255).all()
    assert (frame[-16:, 16 * paddle : 16 * paddle + 32] == 255).all()
    assert int((frame[:, :, 0] > 0).sum()) == 3 * 16 * 16
    env.step(1)
    env.step(1)  # frame 3 is blank to the agent: drawn dark grey
    frame = env.render()
    assert set(np.unique(frame)) == {0, 80}


def test_render_ansi_and_no_render_mode() -> None:
    env = CatchEnv(size=5, render_mode="ansi")
    env.reset(seed=3)
    text = env.render()
    lines = text.splitlines()
    assert len(lines) == 6 and lines[0].count("o") == 1 and lines[4].count("=") == 2
    assert lines[5] == "frame 1/5"
    quiet = CatchEnv()
    quiet.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert quiet.render() is None


# ---------------------------------------------------------------------------- registration


def test_registered_ids_and_overrides() -> None:
    expected = {
        "Catch-v0": (16, None, 0.0),
        "CatchBlind16-v0": (16, 3, 0.0),
        "CatchBlind24-v0": (24, 5, 0.0),
        "CatchFlicker16-v0": (16, None, 0.5),
        "CatchFlicker24-v0": (24, None, 0.5),
    }
    for env_id, (size, blank_after, flicker) in expected.items():
        env = gym.make(env_id).unwrapped
        assert (env.size, env.blank_after, env.flicker_prob) == (size, blank_after, flicker)
    env = gym.make("Catch-v0", size=24, blank_after=5).unwrapped
    assert (env.size, env.blank_after) == (24, 5)
    assert env.observation_space.shape == (24, 24)


def test_register_envs_is_idempotent_and_works_as_a_plugin_entry_point() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Overriding environment" warning
        envs.register_envs()
    # What Gymnasium 0.26-0.29's plugin loader does with the entry point: load it and call it.
    saved = {k: gym.envs.registry.pop(k) for k in envs.CATCH_IDS}
    try:
        EntryPoint(name="__root__", value="envs:register_envs", group="gymnasium.envs").load()()
        assert set(envs.CATCH_IDS) <= set(gym.envs.registry)
    finally:
        gym.envs.registry.update(saved)


def test_make_without_importing_envs_and_no_torch() -> None:
    code = (
        "import sys, gymnasium as gym\n"
        "env = gym.make('envs:CatchBlind24-v0')\n"
        "assert env.unwrapped.blank_after == 5\n"
        "vec = gym.make_vec('envs:Catch-v0', num_envs=3)\n"
        "assert type(vec).__name__ == 'CatchGymnasiumVectorEnv'\n"
        "assert 'torch' not in sys.modules, 'envs must not import torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_human_render_mode_draws_every_step_in_a_window(monkeypatch):
    """Gymnasium's convention: a human-mode env draws itself after reset and every step."""
    pytest.importorskip("pygame")  # the `human` extra; CI installs it through `dev`
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # no display needed
    env = gym.make("CatchBlind16-v0", render_mode="human")
    assert "HumanRendering" not in str(env), "the env renders natively, not through Gymnasium's wrapper"
    catch = env.unwrapped
    shown = []
    monkeypatch.setattr(catch._window, "fps", 10_000)  # do not wait 1/8 s per frame
    original = catch._window.show
    monkeypatch.setattr(catch._window, "show", lambda rgb: (shown.append(rgb.copy()), original(rgb)))
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(1)
    assert len(shown) == 16 and all(frame.shape == (256, 256, 3) for frame in shown)
    rgb = CatchEnv(size=16, blank_after=3, render_mode="rgb_array")
    rgb.reset(seed=0)
    assert np.array_equal(shown[0], rgb.render()), "the window shows the rgb_array image"
    assert env.render() is None
    env.close()
    assert catch._window._screen is None


def test_human_render_mode_without_pygame_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)  # as if not installed
    env = CatchEnv(render_mode="human")
    with pytest.raises(gym.error.DependencyNotInstalled, match=r'pip install "fw-agents\[human\]"'):
        env.reset(seed=0)
