"""Classification from a fixed sequence of multi-level glimpses (paper §4.2-4.3, Tables 2-3).

Models over the 24-glimpse sequence of :mod:`fw_agents.tasks.glimpse_geometry`:

* :class:`GlimpseRNN`: a memory core reads one glimpse per step (its ``P*P``
  pixels plus the control input) and its output after the last glimpse feeds a
  softmax. For fast weights the **multi-level** model of Figure 3 is used: at
  the end of every level the step's final hidden state is written into the
  fast weights (``write_mask``; no write and no decay anywhere else) and the
  hidden state is wiped (``h -> 0``, ``A`` kept), so the fast memory caches the
  partial results of each level. IRNN, LSTM (any other core) read the same
  sequence, control input included, without wiping.
* :class:`GlimpseConvNet`: the non-recurrent baseline on the same patches: a
  convolution whose receptive field is one glimpse (kernel = stride = ``P``;
  7x7 for MNIST, 12x12 for faces) applied to all 24 glimpses with shared weights,
  then fully connected layers: 3 layers in all for MNIST, 2 for faces.

Command::

    python -m fw_agents.tasks.glimpses --dataset mnist --data-dir /usr/share/datasets/fashion-mnist \\
        --memory fastweights --hidden 100 --steps 10000 --wandb disabled
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fw_agents.cli import run_interruptible
from fw_agents.fields import option
from fw_agents.memory import MEMORY_NAMES, MemoryCore, make_memory
from fw_agents.tasks.cli import TRAINING_STATE, FastWeightsOptions, check_resume, parse_task_args, setup_task, task_parser
from fw_agents.tasks.datasets import ImageDataset, load_dataset
from fw_agents.tasks.glimpse_geometry import (
    NUM_GLIMPSES,
    extract_glimpses,
    glimpse_index,
    glimpse_size,
    level_segments,
    store_flags,
)
from fw_agents.tasks.training import Split, preflight, train_classifier, write_outputs
from fw_agents.validation import check_choice, check_int

CONVNET = "convnet"
MODEL_NAMES: tuple[str, ...] = (*MEMORY_NAMES, CONVNET)
DATASETS: tuple[str, ...] = ("mnist", "faces")
MULTI_LEVEL_CHOICES: tuple[str, ...] = ("auto", "on", "off")
#: ConvNet depth per data set (paper: 3-layer ConvNet for MNIST, 2-layer for faces).
CONV_LAYERS = {"mnist": 3, "faces": 2}


def supports_multi_level(core: MemoryCore) -> bool:
    """Whether ``core`` runs the multi-level model (:attr:`MemoryCore.supports_write_mask`)."""
    return core.supports_write_mask


class GlimpseRNN(nn.Module):
    """A memory core over the glimpse sequence, optionally multi-level (Figure 3).

    :param memory: Memory core name (:data:`fw_agents.memory.MEMORY_NAMES`).
    :param hidden_size: Number of recurrent units.
    :param num_classes: Number of classes.
    :param image_size: Side ``S`` of the square input images (28 or 48).
    :param multi_level: Write into the fast weights and wipe the hidden state between
        levels. ``None``: on for ``fastweights``, off otherwise. Needs a core that
        :func:`supports_multi_level` (fast weights).
    :param memory_kwargs: Extra arguments of the core.
    """

    def __init__(
        self,
        memory: str,
        hidden_size: int,
        num_classes: int,
        image_size: int = 28,
        multi_level: bool | None = None,
        memory_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        patch = glimpse_size(image_size)
        self.image_size = image_size
        self.core = make_memory(memory, patch * patch + 1, hidden_size, **(memory_kwargs or {}))
        if multi_level is None:
            multi_level = memory == "fastweights"
        if multi_level and not supports_multi_level(self.core):
            raise ValueError(f"multi-level needs a core with fast weights (write_mask); {memory!r} has none")
        self.multi_level = multi_level
        self.segments = level_segments(image_size)
        self.register_buffer("control", store_flags(image_size), persistent=False)
        # 1 on the first step of every level but the first: the hidden state is wiped before it
        wipe = torch.zeros(NUM_GLIMPSES)
        wipe[[t0 for t0, _ in self.segments[1:]]] = 1.0
        self.register_buffer("wipe", wipe, persistent=False)
        self.register_buffer("glimpse_index", glimpse_index(image_size), persistent=False)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """:param images: ``[B, S, S]`` (uint8 or float). :return: logits ``[B, num_classes]``."""
        glimpses = extract_glimpses(images, self.glimpse_index)  # [B, 24, P*P]
        batch = glimpses.shape[0]
        control = self.control.view(1, NUM_GLIMPSES, 1).expand(batch, NUM_GLIMPSES, 1)
        x = torch.cat([glimpses, control], dim=2).transpose(0, 1)  # [24, B, P*P + 1]
        if not self.multi_level:
            return self.head(self.core.outputs(x)[-1])
        # One core call over all levels: each level's final h is written into A
        # (A <- λA + η h hᵀ, only on store steps) and h is wiped, A kept, before the next
        # level (Figure 3). Eq. 4 attends over the stored states, instead of forming A
        # after every level and reading it back at every step of the next.
        write_mask = self.control.view(-1, 1).expand(NUM_GLIMPSES, batch)
        hidden_resets = self.wipe.view(-1, 1).expand(NUM_GLIMPSES, batch)
        y = self.core.outputs(x, write_mask=write_mask, hidden_resets=hidden_resets)
        return self.head(y[-1])


class GlimpseConvNet(nn.Module):
    """Non-recurrent baseline on the same 24 patches.

    Layer 1 is a convolution with ``P x P`` kernels and stride ``P`` (receptive field
    one glimpse: 7x7 on MNIST, 12x12 on faces) shared by all glimpses, computed as one
    linear map per glimpse; then ``num_layers - 2`` hidden layers of ``features`` ReLUs
    over all glimpses' features, then the softmax layer.

    :param features: Feature maps of the convolution and width of the hidden layers.
    :param num_classes: Number of classes.
    :param image_size: Side ``S`` of the input images.
    :param num_layers: Layers with weights, >= 2 (paper: 3 for MNIST, 2 for faces).
    """

    def __init__(self, features: int, num_classes: int, image_size: int = 28, num_layers: int = 3) -> None:
        super().__init__()
        check_int("conv-layers", num_layers, 2)
        check_int("hidden (features)", features)
        patch = glimpse_size(image_size)
        self.register_buffer("glimpse_index", glimpse_index(image_size), persistent=False)
        self.conv = nn.Linear(patch * patch, features)  # == Conv2d(1, F, kernel=P, stride=P) per glimpse
        layers: list[nn.Module] = [nn.Flatten()]
        width = NUM_GLIMPSES * features
        for _ in range(num_layers - 2):
            layers += [nn.Linear(width, features), nn.ReLU()]
            width = features
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """:param images: ``[B, S, S]``. :return: logits ``[B, num_classes]``."""
        return self.classifier(torch.relu(self.conv(extract_glimpses(images, self.glimpse_index))))


def build_glimpse_model(
    model: str,
    hidden: int,
    num_classes: int,
    image_size: int,
    conv_layers: int = 3,
    multi_level: bool | None = None,
    memory_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """:class:`GlimpseConvNet` for ``"convnet"``, else :class:`GlimpseRNN` over that core."""
    if model == CONVNET:
        return GlimpseConvNet(hidden, num_classes, image_size, conv_layers)
    return GlimpseRNN(model, hidden, num_classes, image_size, multi_level, memory_kwargs)


@dataclass(kw_only=True)
class GlimpseConfig(FastWeightsOptions):
    """Everything one glimpse run depends on besides the training loop (the command's own
    flags; the fast-weights options from :class:`FastWeightsOptions`)."""

    dataset: str = option("mnist", choices=DATASETS, help="mnist: IDX files (also Fashion-MNIST); faces: 48x48")
    data_dir: str = option(help="IDX folder, FER-2013 CSV, or class-folder tree")
    memory: str = option("fastweights", choices=MODEL_NAMES, help="memory core or convnet")
    hidden: int = option(100, help="recurrent units / ConvNet features")
    multi_level: str = option("auto", choices=MULTI_LEVEL_CHOICES, help="Figure 3 model: auto (on for fast weights), on, off")
    conv_layers: int | None = option(None, help="ConvNet depth (None: 3 for mnist, 2 for faces)")
    val_size: int = option(10_000, help="mnist: training images held out for validation")
    train_limit: int | None = option(None, help="use only the first N training images (None: all)")

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("memory", self.memory, MODEL_NAMES)
        check_choice("multi-level", self.multi_level, MULTI_LEVEL_CHOICES)
        self.check_fast_weights_flags()
        if self.memory == CONVNET and self.multi_level == "on":
            raise ValueError(f"--multi-level on needs a core with fast weights, got --memory {CONVNET}")
        check_int("hidden", self.hidden)
        if self.conv_layers is None:
            self.conv_layers = CONV_LAYERS[self.dataset]
        check_int("conv-layers", self.conv_layers, 2)
        check_int("val-size", self.val_size)
        if self.train_limit is not None:
            check_int("train-limit", self.train_limit)

    def multi_level_flag(self) -> bool | None:
        """``None`` for auto, else the boolean."""
        return {"auto": None, "on": True, "off": False}[self.multi_level]


def to_splits(data: ImageDataset, device: torch.device, train_limit: int | None = None) -> dict[str, Split]:
    """The data set as uint8 image tensors on ``device`` (glimpses are cut per batch)."""
    splits = {}
    for name, (images, labels) in data.splits.items():
        if name == "train" and train_limit is not None:
            images, labels = images[:train_limit], labels[:train_limit]
        splits[name] = Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())).to(device)
    return splits


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    return task_parser(
        "python -m fw_agents.tasks.glimpses",
        "Multi-level glimpse classification (Ba et al. 2016, Tables 2-3).",
        GlimpseConfig,
        steps=10_000,
        eval_every=500,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train and evaluate one model; write the run directory. Bad input is one line (exit 2), a
    non-finite loss one line (exit 1); Ctrl-C or SIGTERM saves the training state (``--resume``
    continues it). :return: exit status."""
    return run_interruptible(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    setup = setup_task(GlimpseConfig, parse_task_args(build_parser, argv))
    task, train_config, device = setup.task, setup.training, setup.device

    tick = time.perf_counter()
    data = load_dataset(task.dataset, task.data_dir, seed=0, val_size=task.val_size)
    splits = to_splits(data, device, task.train_limit)
    data_seconds = time.perf_counter() - tick

    def build_model() -> nn.Module:
        return build_glimpse_model(task.memory, task.hidden, data.num_classes, data.image_size, task.conv_layers,
                                   task.multi_level_flag(), task.memory_kwargs())  # fmt: skip

    preflight(build_model, train_config, len(splits["train"]), NUM_GLIMPSES, f"--hidden {task.hidden}", device)
    torch.manual_seed(train_config.seed)
    model = build_model().to(device)
    multi_level = bool(getattr(model, "multi_level", False))

    config = {
        "task": "glimpses",
        **asdict(task),
        **asdict(train_config),
        "device": str(device),
        "image_size": data.image_size,
        "num_classes": data.num_classes,
        "multi_level_active": multi_level,
    }
    name = f"glimpses-{task.dataset}-{task.memory}-H{task.hidden}"
    resume_step = check_resume(setup.tracking, config)  # before the folder's config.json is rewritten
    with setup.tracking.start(name, config, ("glimpses", task.dataset, task.memory), continue_at=resume_step,
                              sb3_logger=False, step_column="train/updates") as run:  # fmt: skip
        results = train_classifier(model, splits["train"], splits["val"], splits["test"], train_config, run.tracker,
                                   checkpoint=run.path / TRAINING_STATE,
                                   resume=setup.tracking.resume is not None)  # fmt: skip
        results = {
            "task": "glimpses",
            **asdict(task),
            "multi_level_active": multi_level,
            "class_names": list(data.class_names),
            "sizes": {name: len(split) for name, split in splits.items()},
            "data_seconds": data_seconds,
            **results,
        }
        title = f"glimpses ({task.dataset}): {task.memory}, {task.hidden} units"
        paths = write_outputs(run.path, results, model, title, run.tracker)
    print(
        f"{task.dataset} {task.memory} H={task.hidden}: test error {100 * results['test_error']:.2f}% "
        f"at update {results['best_updates']} of {train_config.steps}, "
        f"{1000 * results['sec_per_update']:.2f} ms/update -> {paths['results']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
