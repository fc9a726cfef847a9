"""Throughput of the Catch implementations, side by side in one process.

Rows: the raw single env (``envs.catch.CatchEnv``); the same made through ``gymnasium.make``
(which adds the ``PassiveEnvChecker`` and ``OrderEnforcing`` wrappers); the batched
``envs.vector.CatchGymnasiumVectorEnv`` at 1,024 and 4,096 games; Gymnasium's ``SyncVectorEnv`` over the
single env at the same sizes (the peer); and the SB3 adapter ``envs.sb3.CatchSB3VecEnv``.

Steps are environment steps (one game advanced by one frame); resets are timed but not counted.
Actions are pre-generated (Python ints for the single env, ``int64`` arrays for the batched ones,
cycled from a bank of rows). Each rate is the best of ``--repeats`` timed runs of about
``--seconds`` each, after a warm-up, because the machine is shared and noisy.

Usage::

    python benchmarks/bench_catch.py [--seconds 0.5] [--repeats 3] [--size 16] [--no-sb3]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)
from envs.catch import CatchEnv
from envs.vector import CatchGymnasiumVectorEnv
from fw_agents.cli import OneLineArgumentParser, int_at_least, positive_float

ACTION_BANK_ROWS = 256


def best_rate(run: Callable[[int], float], steps_per_unit: int, seconds: float, repeats: int) -> float:
    """Calibrate how many units fit in ``seconds``, then return the best steps/s over ``repeats`` runs.

    :param run: ``run(units)`` performs ``units`` units of work and returns the elapsed seconds.
    :param steps_per_unit: environment steps per unit (1 for a single env, the games for a batch).
    """
    units = 1
    while (elapsed := run(units)) < 0.05:  # also the warm-up
        units *= 4
    units = max(1, int(units * seconds / elapsed))
    return max(units * steps_per_unit / run(units) for _ in range(repeats))


def single_env_runner(env: gym.Env, size: int) -> Callable[[int], float]:
    actions = np.random.default_rng(0).integers(0, 3, 1 << 16).tolist()
    mask = len(actions) - 1
    env.reset(seed=0)

    def run(units: int) -> float:
        step, reset, acts = env.step, env.reset, actions
        start = time.perf_counter()
        for i in range(units):
            if step(acts[i & mask])[2]:
                reset()
        return time.perf_counter() - start

    return run


def vector_env_runner(step: Callable[[np.ndarray], object], num_games: int) -> Callable[[int], float]:
    bank = np.random.default_rng(0).integers(0, 3, (ACTION_BANK_ROWS, num_games))
    rows = [bank[i] for i in range(ACTION_BANK_ROWS)]

    def run(units: int) -> float:
        start = time.perf_counter()
        for i in range(units):
            step(rows[i % ACTION_BANK_ROWS])
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive_float, default=0.5, help="duration of each timed run")
    parser.add_argument("--repeats", type=int_at_least(1), default=3, help="timed runs per row (the best is kept)")
    parser.add_argument("--size", type=int_at_least(3), default=16, help="N (screen side and frames per episode)")
    parser.add_argument("--no-sb3", action="store_true", help="skip the SB3 adapter row (imports torch)")
    args = parser.parse_args()
    n, sec, rep = args.size, args.seconds, args.repeats

    rows: list[tuple[str, int, float]] = []

    def add(name: str, games: int, rate: float) -> None:
        rows.append((name, games, rate))
        print(f"  measured {name} x {games:,}: {rate:,.0f} steps/s", flush=True)

    add("CatchEnv (raw)", 1, best_rate(single_env_runner(CatchEnv(size=n), n), 1, sec, rep))
    add("gym.make('Catch-v0')", 1, best_rate(single_env_runner(gym.make("Catch-v0", size=n), n), 1, sec, rep))
    for games in (1024, 4096):
        vec = CatchGymnasiumVectorEnv(games, size=n)
        vec.reset(seed=0)
        add("CatchGymnasiumVectorEnv", games, best_rate(vector_env_runner(vec.step, games), games, sec, rep))
    for games in (1024, 4096):
        sync = gym.vector.SyncVectorEnv([lambda: CatchEnv(size=n) for _ in range(games)])
        sync.reset(seed=0)
        add("SyncVectorEnv(CatchEnv)", games, best_rate(vector_env_runner(sync.step, games), games, sec, rep))
    if not args.no_sb3:
        from envs.sb3 import CatchSB3VecEnv

        sb3 = CatchSB3VecEnv(4096, size=n)
        sb3.reset()
        add("envs.sb3.CatchSB3VecEnv (SB3)", 4096, best_rate(vector_env_runner(sb3.step, 4096), 4096, sec, rep))

    single = rows[0][2]
    sync_rate = {g: r for name, g, r in rows if name.startswith("SyncVectorEnv")}
    print()
    print(f"Catch N={n}, best of {rep} runs of ~{sec:g} s; steps = game steps per second")
    print()
    print("| implementation | games | steps/s | vs raw CatchEnv | vs SyncVectorEnv, same games |")
    print("|---|---:|---:|---:|---:|")
    for name, games, rate in rows:
        vs_sync = f"{rate / sync_rate[games]:.1f}x" if games in sync_rate else "-"
        print(f"| {name} | {games:,} | {rate:,.0f} | {rate / single:.2f}x | {vs_sync} |")
    print()
    vec4096 = next(r for name, g, r in rows if name == "CatchGymnasiumVectorEnv" and g == 4096)
    print(f"target >= 10,000,000 steps/s vectorised at 4,096 games: {'met' if vec4096 >= 1e7 else 'NOT met'}")
    print(f"target >= 50,000 steps/s for the single env (raw): {'met' if single >= 5e4 else 'NOT met'}")


if __name__ == "__main__":
    main()
