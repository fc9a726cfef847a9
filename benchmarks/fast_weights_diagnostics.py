#!/usr/bin/env python
"""Why does the fast-weights agent learn slowly early? Probes of its core during PPO training.

Trains the agent (``TrainConfig``'s PPO settings, the agent's default core options with each
variant's ``memory_kwargs`` over them) and, at ``--probes`` points of training, rolls out the
current policy on fresh envs and measures, by step ``k`` of an episode:

- ``fast``: the fast memory's share of the drive at the first inner step of Eq. 5,
  ``|A(t-1) h_0(t)| / |z(t)|``, with ``z = W h(t-1) + C x(t)`` and ``h_0 = relu(z)``;
- ``slow``: the slow recurrence against the input, ``|W h(t-1)| / |C x(t)|``;
- ``reach``: how much the core's output at the end of a window still depends on the input
  ``k`` steps earlier, ``|d v.y(T) / d x(T-k)| / |d v.y(T) / d x(T)|`` (``v`` a random unit
  vector, mean over envs whose episode began before ``T-k``): the memory the gradient sees.

Between probes it records the gradient norms reaching ``W`` and ``C`` and those of every
policy parameter, at each optimizer step (after SB3's clipping)::

    python benchmarks/fast_weights_diagnostics.py --env CatchBlind16-v0 \\
        --variant 'defaults={}' --variant 'id0.5={"identity_scale": 0.5}'

Writes a markdown report (``--out``, atomically) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from suite_tasks import parse_variant

from fw_agents.config import TrainConfig
from fw_agents.train import build_agent, make_env
from fw_agents.cli import OneLineArgumentParser, run_cli
from fw_agents.runs.files import write_text_atomically


def episode_steps(starts: np.ndarray) -> np.ndarray:
    """``[T, N]`` episode-start flags -> the step of its episode each entry is (-1: unknown,
    the episode began before the recording)."""
    steps = np.full(starts.shape, -1, dtype=np.int64)
    count = np.full(starts.shape[1], -1, dtype=np.int64)
    for t, row in enumerate(starts):
        count = np.where(row > 0.5, 0, np.where(count >= 0, count + 1, -1))
        steps[t] = count
    return steps


@torch.no_grad()
def record(model: Any, env_id: str, n_envs: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll out the policy (sampling its actions) from a fresh reset: the core's inputs
    ``[T, N, F]`` and the episode starts ``[T, N]`` (the first step starts every env)."""
    env = make_env(env_id, n_envs, seed)
    obs, states = env.reset(), None
    starts = np.ones(n_envs, dtype=np.float32)
    features, flags = [], []
    policy = model.policy
    for _ in range(steps):
        obs_tensor = policy.obs_to_tensor(obs)[0]
        features.append(policy.extract_features(obs_tensor, policy.pi_features_extractor))
        flags.append(starts.copy())
        action, states = model.predict(obs, state=states, episode_start=starts, deterministic=False)
        obs, _, dones, _ = env.step(action)
        starts = dones.astype(np.float32)
    env.close()
    return torch.stack(features), torch.as_tensor(np.stack(flags))


@torch.no_grad()
def drive_shares(core: Any, x: torch.Tensor, starts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per entry ``[T, N]``: ``|A h_0| / |z|`` and ``|W h| / |C x|`` before each step."""
    state = core.initial_state(x.shape[1], x.device)
    fast, slow = [], []
    for t in range(x.shape[0]):
        keep = (1.0 - starts[t]).to(x.dtype)
        h, A = state[0] * keep[:, None], state[1] * keep[:, None, None]
        recurrent, driven = h @ core.slow_weights.T, core.C(x[t])
        z = recurrent + driven
        fast.append(torch.einsum("bij,bj->bi", A, torch.relu(z)).norm(dim=1) / z.norm(dim=1).clamp_min(1e-12))
        slow.append(recurrent.norm(dim=1) / driven.norm(dim=1).clamp_min(1e-12))
        _, state = core(x[t : t + 1], state, episode_starts=starts[t : t + 1])
    return torch.stack(fast).numpy(), torch.stack(slow).numpy()


def reach(core: Any, x: torch.Tensor, starts: torch.Tensor, window: int, ends: int, seed: int) -> np.ndarray:
    """``reach[k]``, ``k < window``: mean ``|d v.y(T)/d x(T-k)| / |d v.y(T)/d x(T)|`` over
    ``ends`` steps ``T`` and the envs whose episode began at or before ``T-k`` (each run
    from the recording's start, where every env starts an episode)."""
    generator = torch.Generator().manual_seed(seed)
    steps = episode_steps(starts.numpy())
    sums, counts = np.zeros(window), np.zeros(window)
    for end in np.linspace(window - 1, x.shape[0] - 1, ends).astype(int):
        inputs = x[: end + 1].clone().requires_grad_(True)
        y, _ = core(inputs, None, episode_starts=starts[: end + 1])
        v = torch.randn(y.shape[1:], generator=generator)
        (grad,) = torch.autograd.grad((y[-1] * v).sum(), inputs)
        norms = grad[-window:].norm(dim=2).flip(0).numpy()  # [window, N], k = 0 at T
        for k in range(window):
            valid = (steps[end] >= k) & (norms[0] > 0)
            sums[k] += (norms[k][valid] / norms[0][valid]).sum()
            counts[k] += valid.sum()
    return sums / np.maximum(counts, 1)


class GradientNorms:
    """Record ``|grad W|``, ``|grad C|`` and the policy's total gradient norm at every optimizer step."""

    def __init__(self, model: Any) -> None:
        self.policy, self.core = model.policy, model.policy.lstm_actor.core
        self.rows: list[tuple[float, float, float]] = []
        optimizer = model.policy.optimizer
        step = optimizer.step

        def recording_step(*args: Any, **kwargs: Any) -> Any:
            grads = [p.grad.norm() for p in self.policy.parameters() if p.grad is not None]
            self.rows.append(
                (float(self.core.W.weight.grad.norm()), float(self.core.C.weight.grad.norm()), float(torch.stack(grads).norm()))
            )
            return step(*args, **kwargs)

        optimizer.step = recording_step

    def take(self) -> tuple[float, float, float]:
        """Mean of the rows since the last call."""
        rows, self.rows = self.rows, []
        return tuple(np.mean(rows, axis=0)) if rows else (float("nan"),) * 3


def probe_variant(args: argparse.Namespace, label: str, options: dict[str, Any]) -> list[str]:
    config = TrainConfig(env=args.env, memory="fastweights", memory_kwargs=options, seed=args.seed, device="cpu")
    env = make_env(args.env, config.n_envs, args.seed)
    model = build_agent(config, env)
    core = model.policy.lstm_actor.core
    grads = GradientNorms(model)
    lines = [f"### {label}: `{json.dumps(config.resolved_memory_kwargs())}`", ""]
    columns = " | ".join(f"k={k}" for k in range(args.window))
    shares = ["fast / slow by episode step k:", "", f"| steps | {columns} |", "|---|" + "---|" * args.window]
    reaches = ["reach by lag k, and the gradient norms:", "", f"| steps | grad W / C / all | {columns} |",
               "|---|---|" + "---|" * args.window]
    for point in np.linspace(0, args.timesteps, args.probes).astype(int):
        if point > model.num_timesteps:
            model.learn(point - model.num_timesteps, reset_num_timesteps=False)
        x, starts = record(model, args.env, args.probe_envs, args.probe_steps, args.seed + 10_000)
        fast, slow = drive_shares(core, x, starts)
        spread = reach(core, x, starts, args.window, args.ends, args.seed)
        ks = episode_steps(starts.numpy())
        cells = [f"{fast[ks == k].mean():.2f} / {slow[ks == k].mean():.3g}" if (ks == k).any() else "—" for k in range(args.window)]
        shares.append(f"| {model.num_timesteps:,} | " + " | ".join(cells) + " |")
        grad = " / ".join("—" if np.isnan(g) else f"{g:.3f}" for g in grads.take())
        reaches.append(f"| {model.num_timesteps:,} | {grad} | " + " | ".join(f"{r:.2g}" for r in spread) + " |")
    env.close()
    return lines + shares + [""] + reaches + [""]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CatchBlind16-v0", help="Gymnasium id (default: %(default)s)")
    parser.add_argument("--variant", action="append", metavar="LABEL=JSON",
                        help="fast-weights memory_kwargs over the agent's defaults (repeatable; default: defaults={})")
    parser.add_argument("--timesteps", type=int, default=100_000, help="training steps (default: %(default)s)")
    parser.add_argument("--probes", type=int, default=5, help="probe points, 0 and --timesteps included")
    parser.add_argument("--probe-envs", type=int, default=64, help="envs per probe rollout")
    parser.add_argument("--probe-steps", type=int, default=120, help="steps per probe rollout")
    parser.add_argument("--window", type=int, default=8, help="episode steps k reported")
    parser.add_argument("--ends", type=int, default=8, help="window ends averaged in reach")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="markdown report path (default: print only)")
    return parser  # fmt: skip


def parse_variants(texts: Sequence[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """``--variant`` values -> ``(label, memory_kwargs)``, checked as the memory suite checks its
    ``--fast-variant`` (:func:`suite_tasks.parse_variant`); policy options are not probed here.

    :raises ValueError: One line naming the bad value.
    """
    variants = []
    for text in texts or ["defaults={}"]:
        name, options = parse_variant(text, "--variant")
        if "policy" in options:
            raise ValueError(f"--variant {text!r}: policy options are not probed here, only the core's")
        variants.append((name[len("fastweights["):-1], options))
    return variants


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("timesteps", "probe_envs", "probe_steps", "window", "ends"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.probes < 2:
        parser.error(f"--probes must be >= 2 (the start and the end), got {args.probes}")
    if args.window > args.probe_steps:
        parser.error(f"--window {args.window} must be <= --probe-steps {args.probe_steps}")
    variants = parse_variants(args.variant)
    torch.set_num_threads(1)
    report = [
        f"## {args.env}: probes of the fast-weights core during training (seed {args.seed})",
        "",
        "fast, slow, reach: see the module docstring; gradient norms:",
        "mean over the optimizer steps since the previous probe.",
        "",
    ]
    for label, options in variants:
        report += probe_variant(args, label, options)
    text = "\n".join(report)
    print(text)
    if args.out:
        write_text_atomically(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
