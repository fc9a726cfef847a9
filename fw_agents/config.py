"""The settings of a training run: :class:`TrainConfig`, the single source of ``train_agent.py``'s
flags (generated from its fields by :mod:`fw_agents.cli`), and the checks of a core's options."""

from __future__ import annotations

import importlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

import envs
from fw_agents.cli import KeyFlag, check_int_ranges, option
from fw_agents.memory import MEMORY_NAMES, MEMORY_REGISTRY, make_memory, memory_options
from fw_agents.memory.ops.compiled import setting as compiled_setting
from fw_agents.memory.options import ETA_NAMES, FAST_WEIGHTS_OPTIONS
from fw_agents.policies import CRITIC_MODES, resolve_memory_kwargs
from fw_agents.tracking import WANDB_MODES, check_wandb_mode
from fw_agents.validation import check_bool, check_choice, check_float

DEVICES = ("auto", "cpu", "cuda")
#: The minibatch size when ``batch_size`` is None (a rollout smaller than this is one minibatch).
DEFAULT_BATCH_SIZE = 256
#: Largest ``--n-envs``: SB3 steps the envs of a ``DummyVecEnv`` one by one in this process, and a
#: rollout keeps every env's recurrent state (a fast-weights core: ``H + H²`` floats each).
MAX_N_ENVS = 4096
#: Largest ``--eval-episodes`` (an evaluation's returns are kept per episode, in ``evaluations.npz``).
MAX_EVAL_EPISODES = 10_000
#: Default cap on an evaluation episode's steps for an env without a ``TimeLimit`` of its own
#: (gymnasium's ``max_episode_steps``), so an episode the policy never ends cannot hang a run.
DEFAULT_EVAL_MAX_STEPS = 1000
#: Largest ``--threads`` (torch takes a C ``int``; more threads than this helps no machine).
MAX_THREADS = 1024
#: Largest step counts (``--timesteps``, ``--eval-freq``, ``--checkpoint-freq``): a trillion env steps.
MAX_STEPS = 10**12
#: The ``memory_kwargs`` keys a core accepts: its constructor's parameters after the sizes.
core_options = memory_options


def check_memory_kwargs(memory: str, memory_kwargs: Any, hidden_size: int = 128) -> dict[str, Any]:
    """``memory_kwargs`` if ``memory``'s core takes them; ``ValueError`` otherwise.

    An unknown key is named with the accepted ones (:func:`core_options`); the values are checked
    by the core itself, a throwaway one of width ``hidden_size`` built over the policies' defaults
    on the ``meta`` device (no memory, no random numbers drawn).

    :return: The resolved options: :func:`fw_agents.policies.resolve_memory_kwargs` of these.
    """
    if not isinstance(memory_kwargs, dict):
        raise ValueError(f"memory_kwargs must be a dict, got {memory_kwargs!r}")
    accepted = core_options(memory)
    unknown = [key for key in memory_kwargs if key not in accepted]
    if unknown:
        raise ValueError(
            f"unknown memory_kwargs key {unknown[0]!r} for memory {memory}; accepted: {', '.join(accepted) or 'none'}"
        )
    resolved = resolve_memory_kwargs(memory, memory_kwargs)
    try:
        with torch.device("meta"):  # sizes and checks without allocating (or drawing random numbers)
            make_memory(memory, 1, hidden_size, **resolved)
    except TypeError as error:
        raise ValueError(f"memory_kwargs for {memory}: {error}") from None
    return resolved


def check_core_on_device(memory: str, memory_kwargs: dict[str, Any], hidden_size: int, device: str) -> None:
    """Refuse a core whose options cannot run on ``device``: fast weights' ``mode="triton"`` needs
    CUDA (or ``TRITON_INTERPRET=1``), triton and ``hidden_size <= 128``; checked before the run
    starts, where its first step would otherwise fail.

    :param memory_kwargs: The core's resolved options.
    :param device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    :raises ValueError: Naming the mode, why, and the modes this device accepts.
    """
    from fw_agents.memory.fast_weights import MODES
    from fw_agents.memory.ops.fused_recurrent import kernel_unavailable

    if memory != "fastweights" or memory_kwargs.get("mode") != "triton":
        return
    target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    reason = kernel_unavailable(hidden_size, target)
    if reason is not None:
        others = ", ".join(mode for mode in MODES if mode != "triton")
        raise ValueError(f"memory_kwargs mode='triton': {reason}; accepted modes on this device ({target}): {others}")


def _memory_kwargs_help() -> str:
    per_core = "; ".join(f"{name}: {', '.join(core_options(name)) or '-'}" for name in MEMORY_NAMES)
    return (
        "core options as KEY=VALUE (VALUE a Python literal), over the core's defaults "
        f"(fw_agents.policies.DEFAULT_MEMORY_KWARGS); keys by core: {per_core}"
    )


@dataclass
class TrainConfig:
    """Every knob of a training run, each declared once: ``train_agent.py``'s flags are generated
    from these fields (``fw_agents.cli``). The defaults solve ``Catch-v0`` in a few minutes on 2
    CPU cores."""

    env: str = option(
        "Catch-v0",
        help=f"Gymnasium id: a Catch id ({', '.join(envs.CATCH_IDS)}), any registered id, or module:id "
        "to import the module that registers it first (e.g. popgym:popgym-RepeatFirstEasy-v0)",
    )
    memory: str = option("fastweights", help="memory core", choices=MEMORY_NAMES)
    timesteps: int = option(300_000, help="total env steps", low=1, high=MAX_STEPS)
    n_envs: int = option(16, help="parallel envs", low=1, high=MAX_N_ENVS)
    # numpy's seed range, less the evaluation (+10000) and GIF (+20000) offsets
    seed: int = option(0, help="seed of the model and the envs (evaluation envs: seed + 10000)", low=0,
                       high=2**32 - 1 - 20_000)  # fmt: skip
    device: str = option("auto", help="torch device (auto: cuda when available)", choices=DEVICES)
    threads: int | None = option(
        1,
        help="torch CPU threads during the run (None, from Python only: torch's own choice). 1, as "
        "rl-baselines3-zoo's --num-threads 1: on a busy 2-core machine torch's 2 threads trained up to 16x slower than 1",
        low=1,
        high=MAX_THREADS,
    )
    learning_rate: float = option(1e-3, help="Adam step size", aliases=("--lr",))
    n_steps: int = option(64, help="rollout length per env between updates (the rollout must also fit in memory)",
                          low=1, high=1_000_000)  # fmt: skip
    batch_size: int | None = option(
        None, help=f"minibatch size, >= 2 (advantages are normalised over it) and at most the rollout, n_envs * n_steps "
        f"(None: {DEFAULT_BATCH_SIZE}, or the whole rollout when it is smaller)",
        low=2,
    )  # fmt: skip
    n_epochs: int = option(4, help="passes over each rollout per update", low=1, high=1000)
    gamma: float = option(0.99, help="discount factor, in (0, 1]")
    gae_lambda: float = option(0.95, help="GAE lambda, in (0, 1]")
    ent_coef: float = option(0.01, help="entropy bonus coefficient, >= 0")
    hidden_size: int = option(128, help="memory core width (the run must also fit in memory)", low=1, high=65536)
    memory_kwargs: dict[str, Any] = option(default_factory=dict, help=_memory_kwargs_help())
    critic: str = option("shared", help="value head on the actor's core (shared) or its own (separate)",
                         choices=CRITIC_MODES)  # fmt: skip
    eval_freq: int = option(25_000, help="env steps between evaluations", low=1, high=MAX_STEPS)
    eval_episodes: int = option(200, help="episodes per evaluation (and in the final one)", low=1,
                                high=MAX_EVAL_EPISODES)  # fmt: skip
    eval_max_steps: int = option(
        DEFAULT_EVAL_MAX_STEPS,
        help="most steps of an evaluation (and GIF) episode for an env without a time limit of its own (its "
        "max_episode_steps wins); an episode cut there counts as truncated",
        low=1,
        high=1_000_000,
    )
    checkpoint_freq: int = option(50_000, help="env steps between checkpoints", low=1, high=MAX_STEPS)
    gif_episodes: int = option(3, help="episodes recorded in episodes.gif (0: no GIF)", low=0, high=100)
    run_dir: str | None = option(None, help="run directory (None: <runs-root>/<env>-<memory>-s<seed>-<time>, "
                                 "characters outside A-Za-z0-9._- as -)")
    runs_root: str = option("runs", help="parent folder of auto-named run directories")
    wandb: str | None = option(
        None, help="W&B mode (None: $WANDB_MODE, else online with credentials, else offline)", choices=WANDB_MODES
    )
    resume: str | None = option(
        None,
        metavar="PATH",
        help="continue a run: a checkpoint .zip, or a run folder (its latest checkpoint). The run goes on in "
        "the checkpoint's folder (appending to its curves) with the model's settings; --timesteps is the total",
    )
    trust_checkpoint: bool = option(
        False,
        help="let --resume's file run code when loaded (SB3 unpickles it); only for files you made or trust. "
        "Without it, a file that needs more than plain data (spaces, arrays, schedules) is refused",
    )
    wandb_project: str | None = option(None, help="W&B project (None: $WANDB_PROJECT, else fw-agents)")
    wandb_group: str | None = option(None, help="W&B group, e.g. one experiment's seeds")
    wandb_tags: tuple[str, ...] = option((), help="W&B tags")
    wandb_log_model: bool = option(False, help="upload model.zip to W&B as an artifact at the end")
    progress_bar: bool = option(True, help="show a progress bar")
    verbose: int = option(
        0, help="0: the progress bar and the final summary; 1: also SB3's table after every rollout and evaluation",
        low=0, high=1,
    )  # fmt: skip

    def validate(self, across_fields: bool = True) -> None:
        """Raise ``ValueError`` naming the first bad value and what is accepted.

        :param across_fields: Also the checks that combine fields (the minibatch against the rollout,
            ``n_envs * n_steps``). False for a resumed run's flags before its checkpoint, which fixes
            ``n_steps`` and ``batch_size``, is read.
        """
        import_env_module(self.env)  # module:id: the module's own import error, not "unknown env id"
        if not env_registered(self.env):
            catch = ", ".join(envs.CATCH_IDS)
            raise ValueError(
                f"unknown env id {self.env!r}; use a registered Gymnasium id, e.g. {catch}, "
                "or module:id to import the module that registers it (e.g. popgym:popgym-RepeatFirstEasy-v0)"
            )
        for name in ("run_dir", "runs_root", "resume"):  # Path("") is the current folder: never what "" meant
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise ValueError(f"{name} must be a path, got {value!r}" + ("" if name == "runs_root" else "; leave the flag out for none"))
        check_choice("memory", self.memory, tuple(MEMORY_REGISTRY))
        check_choice("device", self.device, DEVICES)
        check_choice("critic", self.critic, CRITIC_MODES)
        check_wandb_mode(self.wandb)  # $WANDB_MODE too when --wandb is not given
        compiled_setting()  # $FW_AGENTS_COMPILED, read by the first scan: a typo is one line now, not mid-run
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
        check_int_ranges(self)  # every int field's range, declared with it
        if across_fields:
            self._check_minibatches()
        check_float("learning_rate", self.learning_rate, 0)
        check_float("gamma", self.gamma, 0, 1, high_inclusive=True)
        check_float("gae_lambda", self.gae_lambda, 0, 1, high_inclusive=True)
        check_float("ent_coef", self.ent_coef, 0, low_inclusive=True)
        check_bool("progress_bar", self.progress_bar)
        check_bool("wandb_log_model", self.wandb_log_model)
        check_memory_kwargs(self.memory, self.memory_kwargs, self.hidden_size)
        check_core_on_device(self.memory, self.resolved_memory_kwargs(), self.hidden_size, self.device)
        check_bool("trust_checkpoint", self.trust_checkpoint)
        if self.resume is not None and not (os.access(self.resume, os.R_OK) and Path(self.resume).exists()):
            raise ValueError(f"cannot read resume checkpoint {self.resume!r} (no such readable file or run folder)")

    @property
    def minibatch_size(self) -> int:
        """The minibatch size a run trains with: ``batch_size``, or when None
        :data:`DEFAULT_BATCH_SIZE` capped at the rollout (``n_envs * n_steps``)."""
        if self.batch_size is not None:
            return self.batch_size
        return min(DEFAULT_BATCH_SIZE, self.n_envs * self.n_steps)

    def _check_minibatches(self) -> None:
        """The rollout (``n_envs * n_steps``) splits into minibatches of ``batch_size`` steps, each >= 2."""
        rollout, batch = self.n_envs * self.n_steps, self.minibatch_size
        if rollout < 2:  # PPO normalises advantages over a minibatch: one step gives NaN
            raise ValueError(f"n_envs * n_steps must be >= 2 (advantages are normalised over a minibatch), got {rollout}")
        if batch > rollout:  # SB3's buffer would train one minibatch of the whole rollout, not this size
            raise ValueError(
                f"batch_size must be an integer in [2, {rollout}] (at most the rollout, n_envs * n_steps = {rollout}), "
                f"got {batch}"
            )
        if rollout % batch == 1:  # the last minibatch of an update: one sample, NaN advantages
            raise ValueError(
                f"batch_size {batch} leaves a last minibatch of one step (n_envs * n_steps = {rollout}), whose "
                "normalised advantages are NaN; choose a batch_size that divides it or leaves at least 2"
            )

    def resolved_memory_kwargs(self) -> dict[str, Any]:
        """The core's options: :func:`fw_agents.policies.resolve_memory_kwargs` (the defaults with
        ``memory_kwargs`` over them, η by unit)."""
        return resolve_memory_kwargs(self.memory, self.memory_kwargs)

    def resolved(self) -> dict[str, Any]:
        """Every field, ``memory_kwargs`` resolved: what ``config.json`` and W&B record."""
        return {**asdict(self), "batch_size": self.minibatch_size, "memory_kwargs": self.resolved_memory_kwargs()}

    def policy_kwargs(self) -> dict[str, Any]:
        """``RecurrentMemoryPolicy``'s keyword arguments."""
        return dict(
            memory=self.memory,
            hidden_size=self.hidden_size,
            memory_kwargs=self.resolved_memory_kwargs(),
            critic=self.critic,
        )


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


def env_registered(env_id: str) -> bool:
    """Whether ``env_id`` names a registered Gymnasium env. Gymnasium's ``module:id`` form
    (e.g. ``popgym:popgym-RepeatFirstEasy-v0``) imports ``module`` first, as ``gym.make`` does."""
    module, sep, name = env_id.partition(":")
    if sep:
        try:
            import_env_module(env_id)
        except ValueError:
            return False
        env_id = name
    return env_id in gym.registry


def import_env_module(env_id: str) -> None:
    """Import the ``module`` of a ``module:id`` env id (nothing for a plain id).

    :raises ValueError: Not a module name, or importing it failed (the module itself missing, or
        one of its dependencies, or its own code raising): one line naming the module and why.
    """
    module, sep, _ = env_id.partition(":")
    if not sep:
        return
    if not module.strip() or module.startswith("."):
        raise ValueError(f"env {env_id!r}: {module!r} is not a module name; use module:id, e.g. popgym:popgym-RepeatFirstEasy-v0")
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - a module's import may raise anything
        text = " ".join(str(error).split())[:200]
        raise ValueError(f"env {env_id!r}: cannot import module {module!r} ({type(error).__name__}: {text})") from None
