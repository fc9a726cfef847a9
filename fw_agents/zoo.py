"""rl-baselines3-zoo plugin: ``FastRecurrentPPO``, the memory policies and the Catch envs in the
zoo's own ``train`` and ``enjoy``, without a fork of the zoo.

    python -m fw_agents.zoo train --algo fast_recurrent_ppo --env CatchBlind16-v0
    python -m fw_agents.zoo train --algo fast_recurrent_ppo --env CatchBlind16-v0 -optimize --n-trials 20
    python -m fw_agents.zoo enjoy --algo fast_recurrent_ppo --env CatchBlind16-v0 -f logs --no-render

Everything after ``train`` / ``enjoy`` is the zoo's own command line (``rl_zoo3.train`` /
``rl_zoo3.enjoy``). :func:`register` (idempotent; call it before ``rl_zoo3.train.train()`` to
use the zoo programmatically) adds:

* ``ALGOS["fast_recurrent_ppo"]``: :class:`~fw_agents.algorithms.FastRecurrentPPO` (its policy
  aliases ``RecurrentMemoryPolicy`` and ``FastWeightsPolicy`` are the YAML's ``policy:`` names).
  ``ppo_lstm`` stays sb3-contrib's ``RecurrentPPO``; its YAML names our policies by dotted path.
* The Catch ids (``import envs``); :class:`ExperimentManager` steps the zoo's default
  (``--vec-env dummy``) training and evaluation envs of a Catch id as one
  ``envs.CatchSB3VecEnv`` (the same games, batched; see :func:`catch_vec_env`).
* Optuna samplers that search η, λ and S (:func:`sample_fast_recurrent_ppo_params`) and merge
  what they sample into the YAML's ``policy_kwargs`` instead of replacing it.

``train`` reads the shipped hyper-parameters (``fw_agents/hyperparams/<algo>.yml``) for the ids
they list unless ``-conf``/``--conf-file`` is given. See docs/zoo.md.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import optuna
import yaml
from rl_zoo3 import enjoy as zoo_enjoy
from rl_zoo3 import exp_manager as zoo_exp_manager
from rl_zoo3 import hyperparams_opt
from rl_zoo3 import train as zoo_train
from rl_zoo3.utils import ALGOS, get_class_by_name
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor

import envs  # noqa: F401  (registers the Catch ids)
from envs.catch import CatchEnv
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.memory.options import merge_options, searched_names, suggest_options, translate_legacy_options
from fw_agents.policies import RecurrentMemoryPolicy, resolve_memory_kwargs
from fw_agents.runs.safe_load import UnsafeModelError
from fw_agents.zoo_checks import ZooInputError, check_hyperparams, checked_enjoy, one_line_parsers
from fw_agents.zoo_trust import TRUST_FLAG, UntrustedRunFolder, untrusted_enjoy

#: The zoo's name of :class:`~fw_agents.algorithms.FastRecurrentPPO`.
ALGO = "fast_recurrent_ppo"

#: The shipped zoo hyper-parameter files, one per algorithm name (``<algo>.yml``).
HYPERPARAMS_DIR = Path(__file__).with_name("hyperparams")

#: The fast-weights options the samplers may search (Optuna parameter names), each on its
#: spec's space (:data:`fw_agents.memory.options.FAST_WEIGHTS_OPTIONS`): η as ``fast_share``
#: (the agents' unit) or, when the experiment's policy sets ``fast_lr``, the paper's η.
FAST_WEIGHT_PARAMS = tuple(dict.fromkeys(searched_names("fast_share") + searched_names("fast_lr")))


#: The algorithm the zoo runs; once a subclass that added the policy aliases, which
#: :class:`~fw_agents.algorithms.FastRecurrentPPO` now has itself (kept for imports of the name).
ZooFastRecurrentPPO = FastRecurrentPPO


# ---------------------------------------------------------------------------- Optuna samplers
#: The hyper-parameters of the experiment whose trial is being sampled (see ExperimentManager).
_EXPERIMENT_HYPERPARAMS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("hyperparams", default={})


def merge_policy_kwargs(base: dict[str, Any] | None, update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the keys of ``update`` over it; ``memory_kwargs`` merged key by key, unless
    ``update`` changes the memory (then ``base``'s core options do not apply); η by unit
    (:func:`~fw_agents.memory.options.merge_options`), legacy ``normalize`` translated."""
    base = dict(base or {})
    merged = {**base, **update}
    if "memory_kwargs" in base and "memory_kwargs" in update and merged.get("memory") == base.get("memory"):
        merged["memory_kwargs"] = merge_options(translate_legacy_options(base["memory_kwargs"] or {}),
                                                translate_legacy_options(update["memory_kwargs"] or {}))  # fmt: skip
    return merged


def memory_policy_class(policy: Any) -> type[RecurrentMemoryPolicy] | None:
    """``policy`` as the zoo's YAML gives it (a class, an alias of :class:`~fw_agents.algorithms.FastRecurrentPPO`,
    a dotted path) if it is a :class:`~fw_agents.policies.RecurrentMemoryPolicy`, else ``None``."""
    if isinstance(policy, str):
        policy = get_class_by_name(policy) if "." in policy else FastRecurrentPPO.policy_aliases.get(policy)
    return policy if isinstance(policy, type) and issubclass(policy, RecurrentMemoryPolicy) else None


def fast_weights_options(policy: Any, policy_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The options of the fast-weights core that ``policy`` (as :func:`memory_policy_class`
    takes it) builds with ``policy_kwargs``, defaults filled in; ``None`` when it builds none."""
    policy = memory_policy_class(policy)
    if policy is None:
        return None
    policy_kwargs = policy_kwargs or {}
    memory = policy_kwargs.get("memory", inspect.signature(policy).parameters["memory"].default)
    if memory != "fastweights":
        return None
    return resolve_memory_kwargs(memory, policy_kwargs.get("memory_kwargs"))


def sample_memory_kwargs(trial: optuna.Trial, eta: str = "fast_share") -> dict[str, Any]:
    """η, λ and S for one trial (Optuna parameters ``eta``, ``decay``, ``inner_steps``), on
    the spec's spaces; ``eta`` is ``"fast_share"`` or the paper's ``"fast_lr"``."""
    return suggest_options(trial, searched_names(eta))


def sample_fast_recurrent_ppo_params(
    trial: optuna.Trial,
    n_actions: int,
    n_envs: int,
    additional_args: dict[str, Any],
    hyperparams: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The zoo's PPO search (``rl_zoo3.hyperparams_opt.sample_ppo_params``: its parameters,
    ranges and names), plus η, λ and S when the policy has a fast-weights core; the sampled
    ``policy_kwargs`` (the zoo's ``net_arch``, ``activation_fn``, and ``memory_kwargs``) are
    merged into the experiment's (:func:`merge_policy_kwargs`), which keeps ``memory``,
    ``hidden_size`` and every core option not searched (``memory_kwargs`` comes back complete,
    the core's defaults filled in).

    :param hyperparams: The experiment's hyper-parameters (``policy``, ``policy_kwargs``); by
        default those of the zoo experiment running the trial (:class:`ExperimentManager`).
    """
    hyperparams = _EXPERIMENT_HYPERPARAMS.get() if hyperparams is None else hyperparams
    sampled = hyperparams_opt.sample_ppo_params(trial, n_actions, n_envs, additional_args)
    options = fast_weights_options(hyperparams.get("policy"), hyperparams.get("policy_kwargs"))
    if options is not None:
        # every option explicit, so that any class loading the model rebuilds this core
        eta = "fast_lr" if "fast_lr" in options else "fast_share"  # the experiment's unit of η
        sampled["policy_kwargs"]["memory_kwargs"] = merge_options(options, sample_memory_kwargs(trial, eta))
    sampled["policy_kwargs"] = merge_policy_kwargs(hyperparams.get("policy_kwargs"), sampled["policy_kwargs"])
    return sampled


def convert_fast_recurrent_ppo_params(params: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's Optuna parameters as hyper-parameters (the zoo's ``--trial-id``):
    the zoo's on-policy conversion, the fast-weights ones as ``policy_kwargs["memory_kwargs"]``
    (merged into the YAML's by :meth:`ExperimentManager.load_trial`)."""
    fast = {key: params[key] for key in FAST_WEIGHT_PARAMS if key in params}
    hyperparams = hyperparams_opt.convert_onpolicy_params({k: v for k, v in params.items() if k not in fast})
    if fast:
        hyperparams["policy_kwargs"]["memory_kwargs"] = fast
    return hyperparams


def _stock_unless_ours(stock: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """``ppo_lstm``'s sampler: ours when the experiment's policy is one of ours, the zoo's otherwise."""

    def sample(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict[str, Any]) -> dict[str, Any]:
        if memory_policy_class(_EXPERIMENT_HYPERPARAMS.get().get("policy")) is not None:
            return sample_fast_recurrent_ppo_params(trial, n_actions, n_envs, additional_args)
        return stock(trial, n_actions, n_envs, additional_args)

    sample.stock = stock  # type: ignore[attr-defined]
    return sample


# ------------------------------------------------------------------------- batched Catch envs
_PLAIN_WRAPPERS = (Monitor, gym.wrappers.OrderEnforcing, gym.wrappers.PassiveEnvChecker)


def catch_vec_env(env_fns: Sequence[Callable[[], gym.Env]], **vec_env_kwargs: Any) -> VecEnv:
    """``vec_env_cls`` for ``make_vec_env``: the games of ``env_fns`` as one
    ``envs.CatchSB3VecEnv`` (same observations, rewards, dones, infos and seeding as the
    ``DummyVecEnv``; episode statistics by ``VecMonitor``, into the first env's monitor file).

    Falls back to ``DummyVecEnv`` unless the envs are plain Catch games (only ``Monitor`` and
    Gymnasium's checkers around a :class:`envs.catch.CatchEnv`; no zoo ``env_wrapper``).
    """
    from envs.sb3 import CatchSB3VecEnv

    probe = env_fns[0]()
    wrappers, env = [], probe
    while isinstance(env, gym.Wrapper):
        wrappers.append(env)
        env = env.env
    plain = isinstance(env, CatchEnv) and all(isinstance(w, _PLAIN_WRAPPERS) for w in wrappers)
    monitor = next((w for w in wrappers if isinstance(w, Monitor)), None)
    filename = monitor.results_writer.file_handler.name if monitor and monitor.results_writer else None
    probe.close()
    if not plain or vec_env_kwargs:
        return DummyVecEnv(env_fns, **vec_env_kwargs)
    config = dataclasses.asdict(env.config)
    batched = CatchSB3VecEnv(len(env_fns), render_mode=env.render_mode, **config)
    return VecMonitor(batched, filename=filename, info_keywords=("caught",))


# -------------------------------------------------------------------------- experiment manager
class ExperimentManager(zoo_exp_manager.ExperimentManager):
    """The zoo's experiment manager with three changes for this project:

    * a trial's sampler sees the experiment's hyper-parameters, to merge into its ``policy_kwargs``;
    * ``--trial-id`` (with ``fast_recurrent_ppo`` or a YAML entry naming one of this project's
      policies) converts the trial as :func:`convert_fast_recurrent_ppo_params` and merges its
      ``policy_kwargs`` into the YAML entry's;
    * the default ``dummy`` envs of a Catch id are one batched ``envs.CatchSB3VecEnv``;
    * ``--trial-id 0`` loads trial 0 (the zoo reads ``if self.trial_id:``, which took 0 for
      "no trial" and trained the YAML's hyper-parameters; see :class:`_GivenTrialId`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.trial_id is not None:
            self.trial_id = _GivenTrialId(self.trial_id)
        entry_point = gym.spec(self.env_name.gym_id).entry_point
        if self.vec_env_class is DummyVecEnv and entry_point in (CatchEnv, "envs.catch:CatchEnv"):
            self.vec_env_class = catch_vec_env  # type: ignore[assignment]

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]) -> tuple[dict[str, Any], Any, Any, Any]:
        """The zoo's, then :func:`~fw_agents.zoo_checks.check_hyperparams`: before the zoo makes the run folder."""
        processed = super()._preprocess_hyperparams(hyperparams)
        policy = memory_policy_class(processed[0].get("policy"))
        check_hyperparams(ALGOS[self.algo], self.env_name.gym_id, policy, processed[0], self.n_envs, self.env_kwargs)
        return processed

    def objective(self, trial: optuna.Trial) -> float:
        token = _EXPERIMENT_HYPERPARAMS.set(self._hyperparams)
        try:
            return super().objective(trial)
        finally:
            _EXPERIMENT_HYPERPARAMS.reset(token)

    def load_trial(self, storage: str, study_name: str, trial_id: int | None = None, convert: bool = True) -> dict[str, Any]:
        entry = _yaml_entry(Path(self.config), self.env_name.gym_id) if str(self.config).endswith((".yml", ".yaml")) else {}
        if not convert or (self.algo != ALGO and memory_policy_class(entry.get("policy")) is None):
            return super().load_trial(storage, study_name, trial_id, convert)
        params = convert_fast_recurrent_ppo_params(super().load_trial(storage, study_name, trial_id, convert=False))
        base = entry.get("policy_kwargs") or {}
        base = eval(base, vars(zoo_exp_manager)) if isinstance(base, str) else base  # as the zoo reads it
        params["policy_kwargs"] = merge_policy_kwargs(base, params["policy_kwargs"])
        return params


class _GivenTrialId(int):
    """A ``--trial-id`` that was given: true even when it is 0, so that the zoo's
    ``if self.trial_id:`` (``ExperimentManager.read_hyperparameters``) loads trial 0; otherwise
    the int it is (``study.trials[trial_id]``)."""

    def __bool__(self) -> bool:
        return True


def _yaml_entry(path: Path, env_id: str) -> dict[str, Any]:
    """``env_id``'s entry of a zoo hyper-parameter file, else its ``default`` one, else ``{}``."""
    table = yaml.safe_load(path.read_text()) or {}
    return table.get(env_id, table.get("default", {}))


# ----------------------------------------------------------------------------- registration
def register() -> None:
    """Add this project's algorithm, samplers, envs and experiment manager to the zoo (idempotent)."""
    ALGOS[ALGO] = FastRecurrentPPO
    hyperparams_opt.HYPERPARAMS_SAMPLER[ALGO] = sample_fast_recurrent_ppo_params
    hyperparams_opt.HYPERPARAMS_CONVERTER[ALGO] = convert_fast_recurrent_ppo_params
    stock = hyperparams_opt.HYPERPARAMS_SAMPLER["ppo_lstm"]
    hyperparams_opt.HYPERPARAMS_SAMPLER["ppo_lstm"] = _stock_unless_ours(getattr(stock, "stock", stock))
    zoo_train.ExperimentManager = ExperimentManager  # what rl_zoo3.train.train() builds


def shipped_conf_file(argv: Sequence[str]) -> Path | None:
    """The shipped hyper-parameter file for the ``--algo`` and ``--env`` of a zoo ``train``
    command line, or ``None`` when it names its own (``-conf``/``--conf-file``) or no shipped
    file lists that env id nor has a ``default`` entry (``fast_recurrent_ppo.yml`` has one: the
    zoo ships no file for that algorithm, and its own files answer an unlisted id with theirs)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("-conf", "--conf-file", default=None)
    args, _ = parser.parse_known_args(argv)
    path = HYPERPARAMS_DIR / f"{args.algo}.yml"
    if args.conf_file is not None or not path.is_file():
        return None
    table = yaml.safe_load(path.read_text()) or {}
    return path if args.env in table or "default" in table else None


COMMANDS: dict[str, Callable[[], None]] = {"train": zoo_train.train, "enjoy": zoo_enjoy.enjoy}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fw_agents.zoo {train,enjoy} ARGS``: :func:`register`, then the zoo's command
    with ``ARGS`` (for ``train``, plus ``--conf-file`` of :func:`shipped_conf_file` if any;
    ``enjoy`` runs nothing its run folder chooses unless ``ARGS`` hold ``--trust-checkpoint``,
    see :mod:`fw_agents.zoo_trust`). Bad input (:mod:`fw_agents.zoo_checks`) and a refused run
    folder are one line on stderr, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: python -m fw_agents.zoo {{{','.join(COMMANDS)}}} [rl_zoo3 arguments ...]"
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{usage}\n\nThe zoo's commands with this project registered (docs/zoo.md); their options, and for "
              f"enjoy {TRUST_FLAG}: replay a run folder you trust as the zoo would (unpickling and its YAML can run code):")
        register()
        for command in COMMANDS:
            print(f"\n=== {command} ===")
            try:
                _run(command, ["--help"])
            except SystemExit:
                pass
        return
    if not argv or argv[0] not in COMMANDS:
        sys.exit(usage)
    command, args = argv[0], argv[1:]
    register()
    conf_file = shipped_conf_file(args) if command == "train" else None
    if conf_file is not None:
        args += ["--conf-file", str(conf_file)]
    untrusted = command == "enjoy" and TRUST_FLAG not in args
    if command == "enjoy":
        args = [arg for arg in args if arg != TRUST_FLAG]
    try:  # bad input is one line, exit 2 (fw_agents.zoo_checks); the run folder's code is refused unless trusted
        with one_line_parsers(), checked_enjoy(), untrusted_enjoy() if untrusted else contextlib.nullcontext():
            _run(command, args)
    except (UntrustedRunFolder, UnsafeModelError, ZooInputError) as error:
        how = f" (on this command line: {TRUST_FLAG})" if isinstance(error, UnsafeModelError) else ""
        print(f"error: {error}{how}", file=sys.stderr)
        sys.exit(2)


def _run(command: str, args: list[str]) -> None:
    """The zoo's ``command`` with ``args`` as its command line."""
    saved_argv = sys.argv
    sys.argv = [f"fw_agents.zoo {command}", *args]
    try:
        COMMANDS[command]()
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    main()
