"""Train a recurrent PPO agent with a memory core on Catch (or any Gymnasium env).

    python train_agent.py --env Catch-v0 --memory fastweights
    python train_agent.py --env CatchBlind16-v0 --memory lstm --timesteps 2000000 --wandb offline
    python train_agent.py --env CatchBlind16-v0 --decay 0.9 --memory-kwargs inner_steps=2

The same command is ``fw-train`` once installed, and ``python -m fw_agents``.

Every option is a field of fw_agents.config.TrainConfig; a core's own options go in
--memory-kwargs (--fast-share or --fast-lr, --decay, --inner-steps, --identity-scale,
--bias-correction are shortcuts for fast weights; table: python -m fw_agents.memory.options). Writes a run directory (model.zip, checkpoints/, progress.csv, TensorBoard
events, learning_curve.png, eval_summary.json, episodes.gif, config.json: the resolved
config). Ctrl-C or SIGTERM saves a checkpoint; --resume continues from it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fw_agents.cli import (
    HelpFormatter,
    OneLineArgumentParser,
    add_config_arguments,
    add_key_flags,
    config_from_args,
    fold_key_flags,
    program_name,
    run_interruptible,
    typed_dests,
)
from fw_agents.config import TrainConfig
from fw_agents.fields import KeyFlag
from fw_agents.memory.options import ETA_NAMES, FAST_WEIGHTS_OPTIONS

#: Command-line shortcuts for the fast-weights options, one per option of the spec
#: (:data:`fw_agents.memory.options.FAST_WEIGHTS_OPTIONS`): ``--decay 0.9`` is
#: ``--memory-kwargs decay=0.9``, and an error with another ``--memory``. ``--fast-lr`` (the
#: paper's η) replaces the default ``--fast-share``; the two are mutually exclusive.
CORE_FLAGS: tuple[KeyFlag, ...] = tuple(
    KeyFlag(o.flag, "memory_kwargs", o.name, o.kind, f"fast weights: {o.help}", ("memory", "fastweights"), o.agent_default)
    for o in FAST_WEIGHTS_OPTIONS
)
#: The flags of :data:`CORE_FLAGS` of which one at most may be given (η's two units).
EXCLUSIVE_CORE_FLAGS: tuple[KeyFlag, ...] = tuple(flag for flag in CORE_FLAGS if flag.key in ETA_NAMES)


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field (its doc as help, its default shown) and the
    fast-weights shortcuts (:data:`CORE_FLAGS`; ``--fast-lr``/``--fast-share`` exclusive)."""
    p = OneLineArgumentParser(prog=program_name("python -m fw_agents"), description=__doc__, formatter_class=HelpFormatter)
    p.set_defaults(config_fields=add_config_arguments(p, TrainConfig))
    group = p.add_argument_group("fast-weights options (shortcuts for --memory-kwargs KEY=VALUE)")
    add_key_flags(group.add_mutually_exclusive_group(), EXCLUSIVE_CORE_FLAGS)
    add_key_flags(group, [flag for flag in CORE_FLAGS if flag not in EXCLUSIVE_CORE_FLAGS])
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The ``TrainConfig`` the command line asks for (the shortcuts folded into ``memory_kwargs``)."""
    args = build_parser().parse_args(argv)
    fold_key_flags(args, CORE_FLAGS)
    return config_from_args(TrainConfig, args, args.config_fields)


def given_fields(argv: Sequence[str] | None = None) -> frozenset[str]:
    """The ``TrainConfig`` fields the command line sets, a flag equal to its default included
    (what ``--resume`` keeps rather than take from the old run's ``config.json``)."""
    typed = typed_dests(build_parser, argv)
    given = {name for name in build_parser().get_default("config_fields") if name in typed}
    if any(flag.dest in typed for flag in CORE_FLAGS):
        given.add("memory_kwargs")
    return frozenset(given)


def _train(argv: Sequence[str] | None) -> int:
    from fw_agents.train import train

    config = parse_config(argv)
    # Ctrl-C / SIGTERM: the checkpoint is saved and reported, then run_interruptible exits; a
    # non-finite loss or a full disk: run_cli's one line, status 1
    summary = train(config, given_flags=given_fields(argv))
    from fw_agents.runs.evaluation import cut_text

    catch = f", catch rate {summary['catch_rate']:.1%}" if "catch_rate" in summary else ""
    truncated = summary.get("truncated_episodes")
    cut = f", {truncated} {cut_text(summary.get('max_episode_steps'))}" if truncated else ""
    print(
        f"evaluation over {summary['episodes']} episodes: mean return {summary['mean_return']:.3f}"
        f"{catch}{cut}  ->  {summary['run_dir']}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_interruptible(_train, argv)


if __name__ == "__main__":
    sys.exit(main())
