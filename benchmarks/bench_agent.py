"""Whole-process RecurrentPPO training throughput (env steps/s) on CatchBlind16-v0.

Side by side in one process, same env, n_envs, n_steps, batch size, epochs and
128 hidden units: stock ``RecurrentPPO("MlpLstmPolicy")`` (the peer) against the
same stock algorithm with :class:`fw_agents.policies.RecurrentMemoryPolicy` over
each memory core, and :class:`fw_agents.algorithms.FastRecurrentPPO` (stock
RecurrentPPO with a compact rollout buffer, same results) with that policy.
Runs alternate (peer, ours, peer, ours, ...) and the median rate is reported.

    python benchmarks/bench_agent.py [--rollouts 6] [--repeats 3] [--memories fastweights lstm] [--threads 1] [--device cuda]
    python benchmarks/bench_agent.py --memories fastweights --fast-variant 'nobc={"bias_correction": false}' --threads 1

On the CPU, fast weights also run as "FastRecurrentPPO:fastweights (Python loops)": the same
agent with the scan's loops in Python instead of compiled (``fw_agents.memory.ops.compiled``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

import envs
from suite_tasks import parse_variant
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.cli import OneLineArgumentParser, int_at_least
from fw_agents.memory import MEMORY_NAMES
from fw_agents.memory.ops import compiled
from fw_agents.policies import RecurrentMemoryPolicy

ENV_ID = "CatchBlind16-v0"
SETTINGS = dict(n_steps=128, batch_size=256, n_epochs=4)
N_ENVS = 8
HIDDEN = 128
PEER = "stock MlpLstmPolicy"
PYTHON_LOOPS = " (Python loops)"  # suffix: the contestant runs the scan's Python loops


def make_env(kind: str) -> VecEnv:
    if kind == "numpy":
        return envs.CatchSB3VecEnv.from_id(ENV_ID, N_ENVS)
    return make_vec_env(ENV_ID, n_envs=N_ENVS)


#: ``--fast-variant`` contestants: label -> fast-weights ``memory_kwargs`` over the agents' defaults.
VARIANTS: dict[str, dict] = {}


def make_model(name: str, env: VecEnv, device: str = "cpu") -> RecurrentPPO:
    if name == PEER:
        return RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=dict(lstm_hidden_size=HIDDEN), seed=0, device=device,
                            **SETTINGS)  # fmt: skip
    algorithm, memory = name.split(":")
    memory, _, label = memory.partition("[")
    return (FastRecurrentPPO if algorithm == "FastRecurrentPPO" else RecurrentPPO)(
        RecurrentMemoryPolicy,
        env,
        policy_kwargs=dict(memory=memory, hidden_size=HIDDEN, memory_kwargs=VARIANTS.get(label.rstrip("]"))),
        seed=0,
        device=device,
        **SETTINGS,
    )


def steps_per_second(name: str, env_kind: str, rollouts: int, device: str = "cpu") -> float:
    in_python = name.endswith(PYTHON_LOOPS)
    model = make_model(name.removesuffix(PYTHON_LOOPS), make_env(env_kind), device)
    per_rollout = SETTINGS["n_steps"] * N_ENVS
    with compiled.python_loops() if in_python else contextlib.nullcontext():
        model.learn(per_rollout)  # warm-up: first rollout and update
        start = time.perf_counter()
        model.learn(rollouts * per_rollout, reset_num_timesteps=False)
        return rollouts * per_rollout / (time.perf_counter() - start)


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int_at_least(1), default=6, help="timed rollouts (of 1,024 steps) per run")
    parser.add_argument("--repeats", type=int_at_least(1), default=3, help="alternating runs per contestant (median kept)")
    parser.add_argument("--memories", nargs="+", default=["fastweights", "lstm"], choices=MEMORY_NAMES,
                        help="cores to time with our policy")  # fmt: skip
    parser.add_argument("--env", choices=["numpy", "dummy"], default="numpy",
                        help="numpy: batched envs.CatchSB3VecEnv; dummy: DummyVecEnv of single envs (same for all)")  # fmt: skip
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads for every run (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every model runs (the envs stay numpy)")
    parser.add_argument("--fast-variant", action="append", default=[], metavar="LABEL=JSON",
                        help="also time FastRecurrentPPO + fast weights with these memory_kwargs, e.g. "
                             "'nobc={\"bias_correction\": false}' (repeatable)")  # fmt: skip
    args = parser.parse_args()
    for text in args.fast_variant:  # checked as the memory suite's --fast-variant
        try:
            name, options = parse_variant(text)
        except ValueError as error:
            parser.error(str(error))
        if "policy" in options:
            parser.error(f"--fast-variant {text!r}: policy options are not timed here, only the core's")
        VARIANTS[name[len("fastweights["):-1]] = options
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, {ENV_ID}, "
          f"{N_ENVS} envs, {SETTINGS}, "
          f"{HIDDEN} units, env: {args.env}, load average before {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")  # fmt: skip
    names = [PEER] + [f"{algo}:{m}" for m in args.memories for algo in ("RecurrentPPO", "FastRecurrentPPO")]
    names += [f"FastRecurrentPPO:fastweights[{label}]" for label in VARIANTS]
    if "fastweights" in args.memories and args.device == "cpu" and compiled.loops() is not None:
        names.append("FastRecurrentPPO:fastweights" + PYTHON_LOOPS)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            rates[name].append(steps_per_second(name, args.env, args.rollouts, args.device))
    # Each repeat runs every contestant back to back, so a ratio within one repeat is far less
    # sensitive to the machine's slow drift; the median of those ratios is reported (and their range).
    print("| policy | env steps/s (median) | × stock (median of per-repeat ratios) | range |")
    print("|---|---|---|---|")
    for name in names:
        ratios = [r / p for r, p in zip(rates[name], rates[PEER])]
        label = name if name == PEER else "{} + RecurrentMemoryPolicy({})".format(*name.split(":"))
        print(f"| {label} | {statistics.median(rates[name]):,.0f} | {statistics.median(ratios):.2f}× "
              f"| {min(ratios):.2f}–{max(ratios):.2f} |")  # fmt: skip
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
