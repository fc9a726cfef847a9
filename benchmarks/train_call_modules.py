"""Which ``fw_agents`` modules one call of ``train()`` passes through, in the order it first enters
them, and how many (all of them, and those outside the cores, ``fw_agents.memory``): a tiny run (Catch-v0, 256 steps, W&B disabled, into a temporary folder) under
``sys.setprofile``. A first call, not profiled, imports every module and builds the compiled loops,
so the count is the call's own path, not the imports'.

    python benchmarks/train_call_modules.py
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("WANDB_MODE", "disabled")

from fw_agents.config import TrainConfig  # noqa: E402

try:
    from fw_agents.train import train  # the training path
except ImportError:  # the layout before fw_agents/train.py held it, in fw_agents/agent.py
    train = importlib.import_module("fw_agents.agent").train


def tiny_config(run_dir: Path) -> TrainConfig:
    """Catch-v0, 256 steps: every part of a run (evaluation, checkpoint, GIF, plots) once."""
    return TrainConfig(
        env="Catch-v0", timesteps=256, n_envs=4, n_steps=32, eval_freq=128, eval_episodes=2, checkpoint_freq=128,
        gif_episodes=1, run_dir=str(run_dir), wandb="disabled", progress_bar=False,
    )  # fmt: skip


def modules_entered(run: Any) -> list[str]:
    """The ``fw_agents`` modules whose code ``run()`` calls into, in order of first entry."""
    seen: dict[str, None] = {}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            name = frame.f_globals.get("__name__", "")
            if name == "fw_agents" or name.startswith("fw_agents."):
                seen.setdefault(name)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return list(seen)


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        train(tiny_config(Path(folder) / "warm-up"))  # imports everything, builds the compiled loops
        modules = modules_entered(lambda: train(tiny_config(Path(folder) / "profiled")))
    for index, name in enumerate(modules, 1):
        print(f"{index:3d}  {name}")
    outside_cores = [name for name in modules if not name.startswith("fw_agents.memory")]
    print(f"{len(modules)} fw_agents modules in one call of train(), {len(outside_cores)} outside fw_agents.memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
