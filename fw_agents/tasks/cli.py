"""Command-line plumbing shared by the task commands.

The one-line error handling itself lives in :mod:`fw_agents.cli`; a
:class:`fw_agents.tasks.datasets.DataError` is a ``ValueError`` and so is reported
the same way.
"""

from __future__ import annotations

import argparse

import torch

from fw_agents.tasks.training import TrainConfig
from fw_agents.tracking import add_tracking_args


def add_training_args(
    parser: argparse.ArgumentParser,
    steps: int,
    lr: float,
    eval_every: int,
    batch_size: int = 128,
) -> None:
    """Add the flags every supervised task shares (``--steps --lr --seed --device ...``).

    :param parser: The parser to extend.
    :param steps: Default number of parameter updates.
    :param lr: Default Adam learning rate.
    :param eval_every: Default number of updates between evaluations.
    :param batch_size: Default mini-batch size (the paper uses 128).
    """
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, default=steps, help="number of parameter updates")
    group.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    group.add_argument("--batch-size", type=int, default=batch_size, help="mini-batch size")
    group.add_argument("--eval-every", type=int, default=eval_every, help="updates between evaluations")
    group.add_argument("--seed", type=int, default=0, help="seed of the model initialisation and batch order")
    group.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm (default: off)")
    add_tracking_args(parser)


def training_setup(args: argparse.Namespace) -> tuple[TrainConfig, torch.device]:
    """Turn the flags of :func:`add_training_args` into a ``TrainConfig`` and a device.

    Applies ``--threads``. :raises ValueError: A bad value among those flags.
    """
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        seed=args.seed,
        grad_clip=args.grad_clip,
    )
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return config, resolve_device(args.device)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise validate ``name``.

    :raises ValueError: Unknown device string, or CUDA requested but unavailable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda[:index]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; choose auto or cpu")
    return device
