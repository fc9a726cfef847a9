"""Command-line plumbing shared by the task commands.

A task command's flags are generated from dataclasses (:mod:`fw_agents.cli`), each
option declared once with its help and default:

* the task's own config (e.g. :class:`fw_agents.tasks.retrieval.RetrievalConfig`),
  usually with the fast-weights options of :class:`FastWeightsOptions`;
* the training loop's :class:`~fw_agents.tasks.training.SupervisedConfig`
  (``--steps --lr --batch-size --eval-every --seed --grad-clip``, per-task defaults);
* :class:`DeviceOptions` (``--device --threads``) and
  :class:`~fw_agents.runs.run.TrackingOptions` (``--run-dir --runs-root --wandb ...``).

The one-line error handling itself lives in :mod:`fw_agents.cli`; a
:class:`fw_agents.tasks.datasets.DataError` is a ``ValueError`` and so is reported
the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from fw_agents.cli import (
    HelpFormatter,
    OneLineArgumentParser,
    add_config_arguments,
    config_from_args,
    program_name,
    typed_dests,
)
from fw_agents.config import DEVICES
from fw_agents.fields import field_names, option
from fw_agents.memory.options import FAST_WEIGHTS_OPTIONS
from fw_agents.tasks.training import SupervisedConfig
from fw_agents.runs.run import TrackingOptions
from fw_agents.validation import check_int

T = TypeVar("T")

#: The file in a task's run folder that ``--resume`` continues from.
TRAINING_STATE = "training_state.pt"
#: ``config.json`` entries a resumed run may change: the total number of updates and where it computes.
RESUMABLE_CHANGES: tuple[str, ...] = ("steps", "device")


class _FastWeightsMethods:
    """The methods of :class:`FastWeightsOptions` (its fields come from the spec)."""

    def check_fast_weights_flags(self) -> None:
        """Refuse a fast-weights option set away from its default for a core that is not fast
        weights (it would be dropped silently). :raises ValueError: Naming the flag and ``--memory``."""
        memory = getattr(self, "memory", None)
        if memory == "fastweights":
            return
        for field in dataclasses.fields(FastWeightsOptions):
            default = next(f.default for f in dataclasses.fields(self) if f.name == field.name)
            if getattr(self, field.name) != default:
                flag = "--" + field.name.replace("_", "-")
                raise ValueError(f"{flag} applies to --memory fastweights only, got --memory {memory}")

    def memory_kwargs(self) -> dict[str, Any]:
        """Core-specific keyword arguments: the fast-weights options set (only that core takes them;
        the core refuses ``fast_lr`` and ``fast_share`` together)."""
        if getattr(self, "memory", None) != "fastweights":
            return {}
        options = {field.name: getattr(self, field.name) for field in dataclasses.fields(FastWeightsOptions)}
        return {key: value for key, value in options.items() if value is not None}


#: The fast-weights core's options for a task config with a ``memory`` field, one field per
#: option of the spec (:data:`fw_agents.memory.options.FAST_WEIGHTS_OPTIONS`: same names and
#: units as the agents' flags; ``fast_lr`` is the paper's η, ``fast_share`` η as a share of the
#: drive). ``None``: the core's default; the core checks the values.
FastWeightsOptions = dataclasses.make_dataclass(
    "FastWeightsOptions",
    [(o.name, o.kind | None, option(None, help=f"fast weights: {o.help} (None: the core's default)"))
     for o in FAST_WEIGHTS_OPTIONS],
    bases=(_FastWeightsMethods,),
    kw_only=True,
)  # fmt: skip
FastWeightsOptions.__module__ = __name__


@dataclass
class DeviceOptions:
    """Where a task command computes."""

    device: str = option("auto", help="torch device: auto (CUDA when available, else CPU), cpu, cuda or cuda:<index>",
                         per_invocation=True)  # fmt: skip
    threads: int | None = option(None, help="torch CPU threads (None: torch's choice)", per_invocation=True)

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
    :class:`DeviceOptions` and :class:`~fw_agents.runs.run.TrackingOptions`).

    :param parser: The parser to extend.
    :param defaults: The task's defaults for :class:`SupervisedConfig` fields
        (``steps=20_000, eval_every=1_000``).
    """
    group = parser.add_argument_group("training")
    add_config_arguments(group, SupervisedConfig, defaults=defaults)
    add_config_arguments(group, DeviceOptions)
    add_config_arguments(parser.add_argument_group("tracking"), TrackingOptions)


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
    :param tracking: Where the run goes (:meth:`~fw_agents.runs.run.TrackingOptions.start`).
    """

    task: T
    training: SupervisedConfig
    device: torch.device
    tracking: TrackingOptions


#: ``config.json`` entries a resumed run never takes from the run (where it computes is this
#: invocation's choice; the others are recorded, not options): the ``per_invocation`` fields.
_NOT_RESUMED = field_names(DeviceOptions, per_invocation=True) + field_names(TrackingOptions, per_invocation=True)


def parse_task_args(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse a task command's flags. With ``--resume DIR``, every option not typed on the
    command line takes the run's own value from its ``config.json`` (as ``train_agent.py
    --resume`` does), required ones included, so ``--resume DIR`` alone continues the run; a
    typed one that differs is named by :func:`check_resume`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--resume")
    if probe.parse_known_args(argv)[0].resume is None:
        return parser.parse_args(argv)
    required = [action for action in parser._actions if action.required]
    for action in required:  # the run's config.json may give them
        action.required = False
    args = parser.parse_args(argv)
    try:
        saved = json.loads((Path(args.resume) / "config.json").read_text())
    except (OSError, ValueError):  # no run there, or not readable: check_resume says so in one line
        saved = {}
    typed = typed_dests(build_parser, argv) if saved else frozenset()
    options = {action.dest for action in parser._actions}
    for name, value in (saved.items() if isinstance(saved, dict) else ()):
        if name in options and name not in typed and name not in _NOT_RESUMED:
            setattr(args, name, value)
    missing = [action.option_strings[0] for action in required if getattr(args, action.dest, None) is None]
    if missing:
        raise ValueError(f"no readable run to resume in {args.resume} (its config.json); give {', '.join(missing)}")
    return args


def setup_task(task_config: type[T], args: argparse.Namespace) -> TaskSetup[T]:
    """Build the configs of a :func:`task_parser` command from its parsed flags, set the
    threads and resolve the device. :raises ValueError: A bad value, named by its flag."""
    task = config_from_args(task_config, args)
    training = config_from_args(SupervisedConfig, args)
    device = config_from_args(DeviceOptions, args).apply()
    return TaskSetup(task, training, device, config_from_args(TrackingOptions, args))


def check_resume(tracking: TrackingOptions, config: Mapping[str, Any]) -> int | None:
    """With ``--resume``, check the run folder before anything in it is touched: it must hold a
    training state, and ``config`` (what the command writes to ``config.json``) must be the run's
    own but for :data:`RESUMABLE_CHANGES`.

    :param tracking: The command's tracking options.
    :param config: The resumed run's configuration, as the command builds it.
    :return: The update of the saved training state (``None`` without ``--resume``), for
        :meth:`~fw_agents.runs.run.TrackingOptions.start`'s ``continue_at``.
    :raises ValueError: No training state, an unreadable one, or a conflicting setting, named by its flag
        (:func:`parse_task_args` fills in the options not typed, so only typed ones can conflict).
    """
    if tracking.resume is None:
        return None
    folder = Path(tracking.resume)
    state_path = folder / TRAINING_STATE
    if not state_path.is_file():
        raise ValueError(f"no training state to resume at {str(state_path)!r}; the run saves one at every evaluation")
    config_path = folder / "config.json"
    try:
        saved = json.loads(config_path.read_text())
        update = int(torch.load(state_path, map_location="cpu", weights_only=True)["update"])
    except Exception as error:  # noqa: BLE001 - a missing, truncated or foreign file
        raise ValueError(f"cannot resume {str(folder)!r}: {type(error).__name__}: {error}") from None
    now = json.loads(json.dumps(dict(config), default=str))  # as config.json holds it
    if saved.get("task") != now.get("task"):
        raise ValueError(f"{str(folder)!r} holds a {saved.get('task')!r} run, not a {now.get('task')!r} one")
    differ = [k for k in sorted(now.keys() | saved.keys()) if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k)]
    if differ:
        given = ", ".join(f"--{key.replace('_', '-')} {now.get(key)}" for key in differ)
        theirs = ", ".join(f"{key}={saved.get(key)!r}" for key in differ)
        verb = "conflicts" if len(differ) == 1 else "conflict"
        raise ValueError(f"{given} {verb} with the run being resumed ({theirs}); give the run's own settings")
    return update


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
    if device is None or device.type not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; choose auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    return device
