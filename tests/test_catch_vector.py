"""Tests of the batched Catch implementations against the single env, step by step."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import envs  # noqa: F401  (registers the ids)
from envs.batch import CatchBatch
from envs.catch import CatchEnv
from envs.core import CatchConfig
from envs.vector import CatchGymnasiumVectorEnv

CONFIGS: list[dict[str, Any]] = [
    {"size": 3},
    {"size": 16},
    {"size": 16, "blank_after": 3},
    {"size": 7, "blank_after": 4, "flicker_prob": 0.3},
    {"size": 6, "paddle_width": 3, "center_paddle": True},
    {"size": 5, "paddle_width": 1, "flicker_prob": 0.6},
]


def assert_infos_equal(expected: dict, actual: dict) -> None:
    """Compare Gymnasium vector info dicts (arrays, masks, nested dicts, object arrays of frames)."""
    assert expected.keys() == actual.keys(), (expected, actual)
    for key, value in expected.items():
        other = actual[key]
        if isinstance(value, dict):
            assert_infos_equal(value, other)
        elif value.dtype == object:
            assert other.dtype == object
            for x, y in zip(value, other):
                assert (x is None and y is None) or (x.dtype == y.dtype and np.array_equal(x, y))
        else:
            assert value.dtype == other.dtype and np.array_equal(value, other), key


def assert_steps_equal(expected: tuple, actual: tuple) -> None:
    for x, y in zip(expected[:4], actual[:4]):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert_infos_equal(expected[4], actual[4])


# ---------------------------------------------------------------------------- vectorised == single


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("kwargs", CONFIGS)
def test_vector_env_equals_sync_vector_env_of_single_envs(kwargs: dict, mode: AutoresetMode) -> None:
    num = 5
    reference = SyncVectorEnv([lambda: CatchEnv(**kwargs) for _ in range(num)], autoreset_mode=mode)
    vector = CatchGymnasiumVectorEnv(num, **kwargs, autoreset_mode=mode)
    assert vector.observation_space == reference.observation_space
    assert vector.action_space == reference.action_space
    assert vector.metadata["autoreset_mode"] == mode

    obs_ref, info_ref = reference.reset(seed=11)
    obs_vec, info_vec = vector.reset(seed=11)
    np.testing.assert_array_equal(obs_ref, obs_vec)
    assert info_ref == info_vec == {}
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(6 * kwargs["size"]):  # several episodes per game, autoresets included
        actions = rng.integers(0, 3, num)
        expected, actual = reference.step(actions), vector.step(actions)
        assert_steps_equal(expected, actual)
        ended += int(expected[2].sum())
    assert ended >= 5 * num


def test_partial_resets_desynchronise_games_identically() -> None:
    """Games restarted at different times (reset_mask) and with per-game seeds stay identical."""
    kwargs = {"size": 6, "flicker_prob": 0.25, "blank_after": 4}
    num = 6
    for mode in (AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED):
        reference = SyncVectorEnv([lambda: CatchEnv(**kwargs) for _ in range(num)], autoreset_mode=mode)
        vector = CatchGymnasiumVectorEnv(num, **kwargs, autoreset_mode=mode)
        seeds = [3, 4, 50, 7, 8, 9]
        np.testing.assert_array_equal(reference.reset(seed=seeds)[0], vector.reset(seed=seeds)[0])
        rng = np.random.default_rng(1)
        done = np.zeros(num, dtype=bool)
        for t in range(120):
            mask = rng.random(num) < 0.1
            if mode == AutoresetMode.DISABLED:
                mask |= done
            if mask.any():
                seeds = [int(s) if rng.random() < 0.3 else None for s in rng.integers(0, 100, num)]
                obs_ref, _ = reference.reset(seed=seeds, options={"reset_mask": mask.copy()})
                obs_vec, _ = vector.reset(seed=seeds, options={"reset_mask": mask.copy()})
                np.testing.assert_array_equal(obs_ref, obs_vec)
            actions = rng.integers(0, 3, num)
            expected, actual = reference.step(actions), vector.step(actions)
            assert_steps_equal(expected, actual)
            done = expected[2]


def test_disabled_autoreset_refuses_to_step_finished_games() -> None:
    vector = CatchGymnasiumVectorEnv(3, size=3, autoreset_mode="Disabled")
    vector.reset(seed=0)
    vector.step(np.ones(3, dtype=np.int64))
    _, _, terminated, _, _ = vector.step(np.ones(3, dtype=np.int64))
    assert terminated.all()
    with pytest.raises(RuntimeError, match="reset_mask"):
        vector.step(np.ones(3, dtype=np.int64))


def test_per_game_seeding_matches_single_envs_across_pool_refills() -> None:
    """Game i of a batch seeded s plays exactly the episodes of a single env seeded s + i."""
    config = CatchConfig(size=4, flicker_prob=0.5)
    num, episodes = 3, 23
    small_pool = CatchBatch(num, config, pool_episodes=2)  # refills every other episode
    default_pool = CatchBatch(num, config)
    singles = [CatchEnv(size=4, flicker_prob=0.5) for _ in range(num)]
    for b in (small_pool, default_pool):
        b.seed([100 + i for i in range(num)])
        b.restart()
    starts = [env.reset(seed=100 + i)[0] for i, env in enumerate(singles)]
    for e in range(episodes):
        if e:
            starts = [env.reset()[0] for env in singles]
            small_pool.restart()
            default_pool.restart()
        for b in (small_pool, default_pool):
            np.testing.assert_array_equal(b.observe(), np.stack(starts))
            assert b.ball.tolist() == [env._ball for env in singles]


def test_generator_random_is_block_invariant() -> None:
    """The property the engine's per-game pools rely on (see envs/batch.py)."""
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    chunks = np.concatenate([a.random(3) for _ in range(7)])
    np.testing.assert_array_equal(chunks, b.random(21))


def test_seeding_is_reproducible_and_unseeded_games_differ() -> None:
    def run(seed: int | None) -> np.ndarray:
        vector = CatchGymnasiumVectorEnv(64, size=8)
        frames = [vector.reset(seed=seed)[0]]
        for t in range(30):
            frames.append(vector.step(np.full(64, t % 3))[0])
        return np.stack(frames)

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))
    assert not np.array_equal(run(None), run(None))
    vector = CatchGymnasiumVectorEnv(4)
    vector.reset(seed=10)
    assert vector.np_random_seed == (10, 11, 12, 13)


# ---------------------------------------------------------------------------- the Gymnasium API


def test_make_vec_uses_the_vector_entry_point() -> None:
    vector = gym.make_vec("CatchBlind24-v0", num_envs=8)
    assert isinstance(vector, CatchGymnasiumVectorEnv)
    assert vector.config == CatchConfig(size=24, blank_after=5)
    assert vector.observation_space.shape == (8, 24, 24)
    sync = gym.make_vec("CatchBlind24-v0", num_envs=8, vectorization_mode="sync")
    np.testing.assert_array_equal(vector.reset(seed=1)[0], sync.reset(seed=1)[0])
    actions = np.random.default_rng(0).integers(0, 3, (30, 8))
    for a in actions:
        assert_steps_equal(sync.step(a), vector.step(a))


def test_vector_observations_are_fresh_arrays() -> None:
    vector = CatchGymnasiumVectorEnv(4, size=5)
    kept = [vector.reset(seed=0)[0]]
    copies = [kept[0].copy()]
    for _ in range(10):
        obs = vector.step(np.full(4, 2))[0]
        kept.append(obs)
        copies.append(obs.copy())
    for k, c in zip(kept, copies):
        np.testing.assert_array_equal(k, c)


@pytest.mark.parametrize(
    "actions, match",
    [
        (np.array([0, 1, 3]), r"got 3 for game 2"),
        (np.array([-1, 1, 1]), r"got -1 for game 0"),
        (np.array([0.0, 1.0, 2.0]), r"dtype float64"),
        (np.array([0, 1]), r"shape \(3,\)"),
        (np.array([[0, 1, 2]]), r"shape \(1, 3\)"),
        ([1, 1, 7], r"got 7 for game 2"),
    ],
)
def test_bad_vector_actions_raise(actions: Any, match: str) -> None:
    vector = CatchGymnasiumVectorEnv(3)
    vector.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        vector.step(actions)
    vector.step(np.array([0, 1, 2], dtype=np.uint8))  # any integer dtype is fine


def test_bad_vector_arguments_raise() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        CatchGymnasiumVectorEnv(0)
    with pytest.raises(ValueError, match="'sometimes'"):
        CatchGymnasiumVectorEnv(2, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="blank_after"):
        CatchGymnasiumVectorEnv(2, blank_after=0)
    with pytest.raises(RuntimeError, match="reset"):
        CatchGymnasiumVectorEnv(2).step(np.ones(2, dtype=np.int64))


def test_vector_render_matches_single_env() -> None:
    for mode in ("rgb_array", "ansi"):
        vector = CatchGymnasiumVectorEnv(3, size=6, blank_after=2, render_mode=mode)
        singles = [CatchEnv(size=6, blank_after=2, render_mode=mode) for _ in range(3)]
        vector.reset(seed=4)
        for i, env in enumerate(singles):
            env.reset(seed=4 + i)
        for t in range(4):
            frames = vector.render()
            assert len(frames) == 3
            for frame, env in zip(frames, singles):
                expected = env.render()
                assert np.array_equal(frame, expected) if mode == "rgb_array" else frame == expected
            vector.step(np.full(3, t % 3))
            for env in singles:
                env.step(t % 3)


# ---------------------------------------------------------------------------- the SB3 adapter


def test_sb3_vec_env_equals_dummy_vec_env_of_single_envs() -> None:
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs.sb3 import CatchSB3VecEnv

    kwargs = {"size": 6, "blank_after": 4, "flicker_prob": 0.2}
    num = 5
    reference = DummyVecEnv([lambda: CatchEnv(**kwargs) for _ in range(num)])
    adapter = CatchSB3VecEnv(num, **kwargs)
    assert adapter.observation_space == reference.observation_space
    assert adapter.action_space == reference.action_space
    reference.seed(21)
    adapter.seed(21)
    np.testing.assert_array_equal(reference.reset(), adapter.reset())
    rng = np.random.default_rng(2)
    ended = 0
    for _ in range(40):
        actions = rng.integers(0, 3, num)
        obs_r, rew_r, done_r, infos_r = reference.step(actions)
        obs_a, rew_a, done_a, infos_a = adapter.step(actions)
        for x, y in ((obs_r, obs_a), (rew_r, rew_a), (done_r, done_a)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        for info_r, info_a in zip(infos_r, infos_a):
            assert info_r.keys() == info_a.keys()
            for key in info_r:
                np.testing.assert_array_equal(info_r[key], info_a[key])
        ended += int(done_r.sum())
    assert ended >= 2 * num
    assert adapter.get_attr("blank_after") == [4] * num
    assert adapter.env_is_wrapped(gym.Wrapper) == [False] * num


def test_sb3_vec_env_trains_with_an_sb3_algorithm() -> None:
    from stable_baselines3 import A2C
    from stable_baselines3.common.vec_env import VecMonitor

    from envs.sb3 import CatchSB3VecEnv

    env = VecMonitor(CatchSB3VecEnv.from_id("CatchBlind16-v0", 8))
    assert env.get_attr("size") == [16] * 8
    model = A2C("MlpPolicy", env, n_steps=16, seed=0, device="cpu")
    model.learn(total_timesteps=8 * 16)
    assert len(model.ep_info_buffer) > 0 and {e["r"] for e in model.ep_info_buffer} <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="not a Catch id"):
        CatchSB3VecEnv.from_id("CartPole-v1", 2)


def test_envs_package_and_engine_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import envs, envs.catch, envs.core, envs.batch, envs.vector\n"
        "assert 'torch' not in sys.modules and 'stable_baselines3' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_vector_random_play_is_quiet() -> None:
    vector = gym.make_vec("CatchFlicker16-v0", num_envs=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vector.reset(seed=0)
        for _ in range(40):
            vector.step(vector.action_space.sample())


@pytest.mark.parametrize(
    "module,old,new",
    [
        ("envs", "CatchVectorEnv", "CatchGymnasiumVectorEnv"),
        ("envs", "CatchVecEnv", "CatchSB3VecEnv"),
        ("envs.vector", "CatchVectorEnv", "CatchGymnasiumVectorEnv"),
        ("envs.sb3", "CatchVecEnv", "CatchSB3VecEnv"),
    ],
)
def test_old_class_names_still_work_with_a_deprecation_warning(module, old, new):
    namespace = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} was renamed {module}.{new}"):
        assert getattr(namespace, old) is getattr(namespace, new)
    with pytest.raises(AttributeError, match="no attribute 'CatchNothing'"):
        namespace.CatchNothing


@pytest.mark.parametrize("seed", ["a", 1.5, True])
def test_reset_with_a_seed_of_the_wrong_type_is_a_clear_value_error(seed: object) -> None:
    from envs import CatchGymnasiumVectorEnv

    with pytest.raises(ValueError, match="seed must be None, an int or a list of 3 seeds, got"):
        CatchGymnasiumVectorEnv(3).reset(seed=seed)
