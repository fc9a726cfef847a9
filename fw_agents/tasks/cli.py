"""Command-line plumbing shared by the task commands.

A task command's flags are generated from dataclasses (:mod:`fw_agents.cli`), each
option declared once with its help and default:

* the task's own config (e.g. :class:`fw_agents.tasks.retrieval.RetrievalConfig`),
  usually with the fast-weights options of :class:`FastWeightsOptions`;
* the training loop's :class:`~fw_agents.tasks.training.SupervisedConfig`
  (``--steps --lr --batch-size --eval-every --seed --grad-clip``, per-task defaults);
* :class:`DeviceOptions` (``--device --threads``) and
  :class:`~fw_agents.tracking.TrackingOptions` (``--run-dir --runs-root --wandb ...``).

The one-line error handling itself lives in :mod:`fw_agents.cli`; a
:class:`fw_agents.tasks.datasets.DataError` is a ``ValueError`` and so is reported
the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from fw_agents.cli import HelpFormatter, OneLineArgumentParser, add_config_arguments, config_from_args, option, program_name
from fw_agents.tasks.training import SupervisedConfig
from fw_agents.tracking import TrackingOptions, add_tracking_args
from fw_agents.validation import check_int

T = TypeVar("T")

#: What ``--device`` accepts (``cuda:<index>`` too).
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


@dataclass(kw_only=True)
class FastWeightsOptions:
    """η, λ, S of the fast-weights core, for a task config with a ``memory`` field
    (``None``: the core's default; the core checks the values)."""

    fast_lr: float | None = option(None, help="fast weights: eta (None: the core's, 0.5)")
    decay: float | None = option(None, help="fast weights: lambda (None: the core's, 0.95)")
    inner_steps: int | None = option(None, help="fast weights: S (None: the core's, 1)")

    def memory_kwargs(self) -> dict[str, Any]:
        """Core-specific keyword arguments (only the fast-weights core takes η, λ, S)."""
        if getattr(self, "memory", None) != "fastweights":
            return {}
        options = {"fast_lr": self.fast_lr, "decay": self.decay, "inner_steps": self.inner_steps}
        return {key: value for key, value in options.items() if value is not None}


@dataclass
class DeviceOptions:
    """Where a task command computes."""

    device: str = option("auto", help="torch device: auto (CUDA when available, else CPU), cpu, cuda or cuda:<index>")
    threads: int | None = option(None, help="torch CPU threads (None: torch's choice)")

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_int("threads", self.threads)

    def apply(self) -> torch.device:
        """Set the thread count; :return: the resolved device."""
        device = resolve_device(self.device)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        return device


def add_training_args(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add the flags every supervised task shares (:class:`SupervisedConfig`,
    :class:`DeviceOptions` and :class:`~fw_agents.tracking.TrackingOptions`).

    :param parser: The parser to extend.
    :param defaults: The task's defaults for :class:`SupervisedConfig` fields
        (``steps=20_000, eval_every=1_000``).
    """
    group = parser.add_argument_group("training")
    add_config_arguments(group, SupervisedConfig, defaults=defaults)
    add_config_arguments(group, DeviceOptions)
    add_tracking_args(parser)


def task_parser(prog: str, description: str, task_config: type, **training_defaults: Any) -> argparse.ArgumentParser:
    """A task command's parser: the flags of ``task_config``, then :func:`add_training_args`
    with ``training_defaults``; ``--help`` shows every default."""
    parser = OneLineArgumentParser(prog=program_name(prog), description=description, formatter_class=HelpFormatter)
    fast = [f.name for f in dataclasses.fields(FastWeightsOptions)]
    add_config_arguments(parser, task_config, exclude=fast)
    if issubclass(task_config, FastWeightsOptions):  # with the task's defaults and help
        own = [f.name for f in dataclasses.fields(task_config) if f.name not in fast]
        add_config_arguments(parser.add_argument_group("fast weights"), task_config, exclude=own)
    add_training_args(parser, **training_defaults)
    return parser


@dataclass
class TaskSetup(Generic[T]):
    """A task command's parsed and checked options.

    :param task: The task's config.
    :param training: The training loop's config.
    :param device: The resolved device (threads already set).
    :param tracking: Where the run goes (:meth:`~fw_agents.tracking.TrackingOptions.start`).
    """

    task: T
    training: SupervisedConfig
    device: torch.device
    tracking: TrackingOptions


def setup_task(task_config: type[T], args: argparse.Namespace) -> TaskSetup[T]:
    """Build the configs of a :func:`task_parser` command from its parsed flags, set the
    threads and resolve the device. :raises ValueError: A bad value, named by its flag."""
    task = config_from_args(task_config, args)
    training = config_from_args(SupervisedConfig, args)
    device = config_from_args(DeviceOptions, args).apply()
    return TaskSetup(task, training, device, config_from_args(TrackingOptions, args))


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise ``cpu``, ``cuda`` or ``cuda:<index>``.

    :raises ValueError: Any other device (``mps``, ``meta``, ...), or CUDA (that index)
        requested but unavailable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; choose auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    return device
