"""The settings of a training run: :class:`TrainConfig`, the single source of ``train_agent.py``'s
flags (generated from its fields by :mod:`fw_agents.cli`).

Plain data, a leaf of the package: importing it pulls neither torch nor gymnasium nor
Stable-Baselines3. The checks that need them (the env registry, a core built on the ``meta``
device, the device) live in :mod:`fw_agents.config_checks`; :meth:`TrainConfig.validate` runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fw_agents.fields import option
from fw_agents.memory import MEMORY_NAMES
from fw_agents.runs.options import resume_option, run_dir_option, runs_root_option, wandb_option, wandb_project_option

#: What ``--device`` accepts (the task commands also ``cuda:<index>``).
DEVICES = ("auto", "cpu", "cuda")
#: Where the value head reads its state: the actor's core (``shared``) or its own (``separate``).
CRITIC_MODES = ("shared", "separate")
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


def _env_help() -> str:
    import envs  # registers the Catch ids with gymnasium: read when the flags are built, not on import

    return (
        f"Gymnasium id: a Catch id ({', '.join(envs.CATCH_IDS)}), any registered id, or module:id "
        "to import the module that registers it first (e.g. popgym:popgym-RepeatFirstEasy-v0)"
    )


def _memory_kwargs_help() -> str:
    from fw_agents.memory import memory_options  # imports each core (torch): read when the flags are built

    per_core = "; ".join(f"{name}: {', '.join(memory_options(name)) or '-'}" for name in MEMORY_NAMES)
    return (
        "core options as KEY=VALUE (VALUE a Python literal), over the core's defaults "
        f"(fw_agents.policies.DEFAULT_MEMORY_KWARGS); keys by core: {per_core}"
    )


@dataclass
class TrainConfig:
    """Every knob of a training run, each declared once: ``train_agent.py``'s flags are generated
    from these fields (``fw_agents.cli``). The defaults solve ``Catch-v0`` in a few minutes on 2
    CPU cores. Plain data: :meth:`validate` runs :func:`fw_agents.config_checks.check_config`."""

    env: str = option("Catch-v0", help=_env_help)
    memory: str = option("fastweights", help="memory core", choices=MEMORY_NAMES)
    timesteps: int = option(300_000, help="total env steps", low=1, high=MAX_STEPS)
    n_envs: int = option(16, help="parallel envs", low=1, high=MAX_N_ENVS)
    # numpy's seed range, less the evaluation (+10000) and GIF (+20000) offsets
    seed: int = option(0, help="seed of the model and the envs (evaluation envs: seed + 10000)", low=0,
                       high=2**32 - 1 - 20_000)  # fmt: skip
    device: str = option("auto", help="torch device (auto: cuda when available)", choices=DEVICES,
                         per_invocation=True, search="worker")  # fmt: skip
    threads: int | None = option(
        1,
        help="torch CPU threads during the run (None, from Python only: torch's own choice). 1, as "
        "rl-baselines3-zoo's --num-threads 1: on a busy 2-core machine torch's 2 threads trained up to 16x slower than 1",
        low=1,
        high=MAX_THREADS,
        per_invocation=True,
        search="worker",
    )
    learning_rate: float = option(1e-3, help="Adam step size", aliases=("--lr",), search="trial")  # drawn by the search
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
    memory_kwargs: dict[str, Any] = option(default_factory=dict, help=_memory_kwargs_help)
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
    run_dir: str | None = run_dir_option("<env>-<memory>-s<seed>")
    runs_root: str = runs_root_option()
    wandb: str | None = wandb_option()
    resume: str | None = resume_option(
        "continue a run: a checkpoint .zip, or a run folder (its latest checkpoint). The run goes on in the "
        "checkpoint's folder (appending to its curves) with the model's settings; --timesteps is the total",
        metavar="PATH",
    )
    # per invocation above all: config.json is plain data anyone can edit (or hand you), so letting it
    # say "trusted" would unpickle (run code from) the checkpoint without the user's --trust-checkpoint
    trust_checkpoint: bool = option(
        False,
        help="let --resume's file run code when loaded (SB3 unpickles it); only for files you made or trust. "
        "Without it, a file that needs more than plain data (spaces, arrays, schedules) is refused",
        per_invocation=True,
        search="worker",
    )
    wandb_project: str | None = wandb_project_option(None)
    wandb_group: str | None = option(None, help="W&B group, e.g. one experiment's seeds", search="worker")
    wandb_tags: tuple[str, ...] = option((), help="W&B tags", search="worker")
    wandb_log_model: bool = option(False, help="upload model.zip to W&B as an artifact at the end", search="worker")
    progress_bar: bool = option(True, help="show a progress bar", per_invocation=True, search="trial")
    verbose: int = option(
        0, help="0: the progress bar and the final summary; 1: also SB3's table after every rollout and evaluation",
        low=0, high=1, search="worker",
    )  # fmt: skip

    def validate(self, across_fields: bool = True) -> None:
        """Raise ``ValueError`` naming the first bad value and what is accepted
        (:func:`fw_agents.config_checks.check_config`, imported here: it needs torch and gymnasium).

        :param across_fields: Also the checks that combine fields (the minibatch against the rollout,
            ``n_envs * n_steps``). False for a resumed run's flags before its checkpoint, which fixes
            ``n_steps`` and ``batch_size``, is read.
        """
        from fw_agents.config_checks import check_config

        check_config(self, across_fields)

    @property
    def minibatch_size(self) -> int:
        """The minibatch size a run trains with: ``batch_size``, or when None
        :data:`DEFAULT_BATCH_SIZE` capped at the rollout (``n_envs * n_steps``)."""
        if self.batch_size is not None:
            return self.batch_size
        return min(DEFAULT_BATCH_SIZE, self.n_envs * self.n_steps)

    def resolved_memory_kwargs(self) -> dict[str, Any]:
        """The core's options: :func:`fw_agents.policies.resolve_memory_kwargs` (the defaults with
        ``memory_kwargs`` over them, η by unit)."""
        from fw_agents.policies import resolve_memory_kwargs  # the policies' defaults (torch): on first use

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
