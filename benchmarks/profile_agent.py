"""Where a ``FastRecurrentPPO`` iteration spends its time, per memory core: rollout against update.

bench_agent.py's setting (CatchBlind16-v0, 8 envs × 128 steps, batch 256, 4 epochs, 128 units),
one process, the cores alternated: each round times one ``collect_rollouts`` and one ``train``
of every core (after a warm-up iteration) and the median over rounds is reported, with the
ratio to the LSTM core's. ``--ops`` adds torch.profiler's self-time table of a rollout and an
update of the first core. ``--python-loops`` also times fast weights with the scan's Python
loops instead of its compiled ones (``fw_agents.memory.ops.compiled``). ``--task`` profiles a
memory-suite task instead, in the suite's setting (its env, 16 envs × 64 steps, minibatch 256:
``suite_runs.build_job_model``), e.g. a POPGym task, whose sequences continue stored states.

    python benchmarks/profile_agent.py [--memories fastweights lstm irnn] [--rounds 5] [--threads 1] [--ops]
    python benchmarks/profile_agent.py --task RepeatPreviousEasy --memories fastweights lstm --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

import bench_agent
import suite_runs
from suite_tasks import TASKS
from fw_agents.cli import OneLineArgumentParser, int_at_least
from fw_agents.memory import MEMORY_NAMES
from fw_agents.memory.ops import compiled

PYTHON_LOOPS = "fastweights (Python loops)"


def _model(name: str, task: str | None):
    core = "fastweights" if name == PYTHON_LOOPS else name
    if task is None:
        model = bench_agent.make_model(f"FastRecurrentPPO:{core}", bench_agent.make_env("numpy"))
    else:
        settings = suite_runs.ppo_settings()
        job = suite_runs.Job(task, core, seed=0, timesteps=0, path="")
        model = suite_runs.build_job_model(job, suite_runs.make_task_env(task, settings["n_envs"], seed=0))
    with _loops(name):
        model.learn(model.n_steps * model.n_envs)  # warm-up: one iteration
    return model, model._init_callback(None)


def _loops(name: str):
    return compiled.python_loops() if name == PYTHON_LOOPS else contextlib.nullcontext()


def _time_iteration(name: str, model, callback) -> tuple[float, float]:
    with _loops(name):
        start = time.perf_counter()
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        middle = time.perf_counter()
        model.train()
        return middle - start, time.perf_counter() - middle


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", nargs="+", default=["fastweights", "lstm", "irnn"], choices=MEMORY_NAMES)
    parser.add_argument("--rounds", type=int_at_least(1), default=5, help="alternating rounds (median kept)")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--ops", action="store_true", help="also the op table of the first core's rollout and update")
    parser.add_argument("--python-loops", action="store_true", help="also fast weights with the scan's Python loops")
    parser.add_argument("--task", choices=list(TASKS), default=None,
                        help="a memory-suite task in the suite's setting (default: bench_agent.py's CatchBlind16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(args.memories) + ([PYTHON_LOOPS] if args.python_loops and compiled.loops() is not None else [])
    models = {name: _model(name, args.task) for name in names}
    model = next(iter(models.values()))[0]
    setting = (f"{args.task or bench_agent.ENV_ID}, {model.n_envs} envs, n_steps {model.n_steps}, batch {model.batch_size}, "
               f"{model.n_epochs} epochs")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {setting}, "
          f"load average before {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")  # fmt: skip
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(_time_iteration(name, *models[name]))
    peer = "lstm" if "lstm" in names else names[0]
    base = [r + u for r, u in times[peer]]
    print(f"| core | rollout (ms) | update (ms) | iteration (ms) | × {peer} (median of per-round ratios) |")
    print("|---|---|---|---|---|")
    for name in names:
        rollout, update = (statistics.median(t[i] for t in times[name]) * 1e3 for i in (0, 1))
        ratio = statistics.median((r + u) / b for (r, u), b in zip(times[name], base))
        print(f"| {name} | {rollout:.1f} | {update:.1f} | {rollout + update:.1f} | {ratio:.2f}× |")
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        name = names[0]
        model, callback = models[name]
        for part in ("rollout", "update"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                if part == "rollout":
                    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
                else:
                    model.train()
            print(f"\n{name}, one {part}: the ops by self time (profiler overhead included)\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
