#!/usr/bin/env python
"""Train a recurrent PPO agent with a memory core on Catch (or any Gymnasium env).

    python train_agent.py --env Catch-v0 --memory fastweights
    python train_agent.py --env CatchBlind16-v0 --memory lstm --timesteps 2000000 --wandb offline

Writes a run directory (model.zip, checkpoints/, progress.csv, TensorBoard events,
learning_curve.png, eval_summary.json, episodes.gif). Ctrl-C or SIGTERM saves a
checkpoint; --resume continues from it.
"""

from __future__ import annotations

import argparse
import signal
import sys

from fw_agents.cli import OneLineArgumentParser, run_cli


def build_parser() -> argparse.ArgumentParser:
    from fw_agents.agent import DEVICES, TrainConfig
    from fw_agents.memory import MEMORY_NAMES
    from fw_agents.policies import CRITIC_MODES
    from fw_agents.tracking import WANDB_MODES

    d = TrainConfig()
    p = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=d.env, help="Gymnasium id (Catch-v0, CatchBlind16-v0, CatchBlind24-v0, ...)")
    p.add_argument("--memory", default=d.memory, choices=MEMORY_NAMES, help="memory core")
    p.add_argument("--timesteps", type=int, default=d.timesteps, help="total env steps")
    p.add_argument("--n-envs", type=int, default=d.n_envs, help="parallel envs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, choices=DEVICES)
    p.add_argument("--learning-rate", "--lr", type=float, default=d.learning_rate)
    p.add_argument("--n-steps", type=int, default=d.n_steps, help="rollout length per env")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--n-epochs", type=int, default=d.n_epochs)
    p.add_argument("--ent-coef", type=float, default=d.ent_coef)
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help="memory core width")
    p.add_argument("--fast-lr", type=float, default=d.fast_lr, help="fast weights: η (the memory's share; see --fast-normalize)")
    p.add_argument("--decay", type=float, default=d.decay, help="fast weights: λ")
    p.add_argument("--inner-steps", type=int, default=d.inner_steps, help="fast weights: S")
    p.add_argument(
        "--fast-normalize",
        action=argparse.BooleanOptionalAction,
        default=d.fast_normalize,
        help="fast weights: η is the fast memory's share of the drive (write scaled by (1-λ)/H); "
        "--no-fast-normalize reads it as the paper's absolute η",
    )
    p.add_argument("--critic", default=d.critic, choices=CRITIC_MODES, help="value head on the actor's core or its own")
    p.add_argument("--eval-freq", type=int, default=d.eval_freq, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--checkpoint-freq", type=int, default=d.checkpoint_freq, help="env steps between checkpoints")
    p.add_argument("--gif-episodes", type=int, default=d.gif_episodes)
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<env>-<memory>-s<seed>-<time>)")
    p.add_argument("--runs-root", default=d.runs_root)
    p.add_argument("--wandb", default=None, choices=WANDB_MODES, help="default: online with credentials, else offline")
    p.add_argument("--resume", default=None, metavar="PATH", help="checkpoint .zip to continue from")
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    return p


def _train(argv: list[str] | None) -> int:
    from fw_agents.agent import NonFiniteError, TrainConfig, train

    config = TrainConfig(**vars(build_parser().parse_args(argv)))
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:  # SIGTERM (schedulers, `timeout`) acts as Ctrl-C
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        summary = train(config)
    except KeyboardInterrupt:
        return 128 + (received[0] if received else signal.SIGINT)  # the checkpoint was saved and reported
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    catch = f", catch rate {summary['catch_rate']:.1%}" if "catch_rate" in summary else ""
    print(
        f"evaluation over {summary['episodes']} episodes: mean return {summary['mean_return']:.3f}"
        f"{catch}  ->  {summary['run_dir']}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_train, argv)


if __name__ == "__main__":
    sys.exit(main())
