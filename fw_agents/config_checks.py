"""The checks of a :class:`~fw_agents.config.TrainConfig` that need the training stack: the env
registry (gymnasium), a core built on the ``meta`` device and the device (torch). What
:meth:`TrainConfig.validate <fw_agents.config.TrainConfig.validate>` runs; the config itself stays
plain data.

Every check raises ``ValueError`` naming the first bad value and what is accepted, in the order
:func:`check_config` lists them (the env first: a ``module:id``'s own import error, before the rest).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

import envs
from fw_agents.config import CRITIC_MODES, DEVICES, TrainConfig
from fw_agents.fields import check_int_ranges
from fw_agents.memory import MEMORY_REGISTRY, make_memory, memory_options
from fw_agents.memory.ops.compiled import setting as compiled_setting
from fw_agents.policies import resolve_memory_kwargs
from fw_agents.validation import check_bool, check_choice, check_float, one_line
from fw_agents.runs.wandb_mode import check_wandb_mode


def check_config(config: TrainConfig, across_fields: bool = True) -> None:
    """Raise ``ValueError`` naming the first bad value of ``config`` and what is accepted.

    :param config: The run's settings.
    :param across_fields: Also the checks that combine fields (the minibatch against the rollout,
        ``n_envs * n_steps``). False for a resumed run's flags before its checkpoint, which fixes
        ``n_steps`` and ``batch_size``, is read.
    """
    import_env_module(config.env)  # module:id: the module's own import error, not "unknown env id"
    if not env_registered(config.env):
        catch = ", ".join(envs.CATCH_IDS)
        raise ValueError(
            f"unknown env id {config.env!r}; use a registered Gymnasium id, e.g. {catch}, "
            "or module:id to import the module that registers it (e.g. popgym:popgym-RepeatFirstEasy-v0)"
        )
    for name in ("run_dir", "runs_root", "resume"):  # Path("") is the current folder: never what "" meant
        value = getattr(config, name)
        if value is not None and not str(value).strip():
            raise ValueError(f"{name} must be a path, got {value!r}" + ("" if name == "runs_root" else "; leave the flag out for none"))
    check_choice("memory", config.memory, tuple(MEMORY_REGISTRY))
    check_choice("device", config.device, DEVICES)
    check_choice("critic", config.critic, CRITIC_MODES)
    check_wandb_mode(config.wandb)  # $WANDB_MODE too when --wandb is not given
    compiled_setting()  # $FW_AGENTS_COMPILED, read by the first scan: a typo is one line now, not mid-run
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    check_int_ranges(config)  # every int field's range, declared with it
    if across_fields:
        check_minibatches(config)
    check_float("learning_rate", config.learning_rate, 0)
    check_float("gamma", config.gamma, 0, 1, high_inclusive=True)
    check_float("gae_lambda", config.gae_lambda, 0, 1, high_inclusive=True)
    check_float("ent_coef", config.ent_coef, 0, low_inclusive=True)
    check_bool("progress_bar", config.progress_bar)
    check_bool("wandb_log_model", config.wandb_log_model)
    check_memory_kwargs(config.memory, config.memory_kwargs, config.hidden_size)
    check_core_on_device(config.memory, config.resolved_memory_kwargs(), config.hidden_size, config.device)
    check_bool("trust_checkpoint", config.trust_checkpoint)
    if config.resume is not None and not (os.access(config.resume, os.R_OK) and Path(config.resume).exists()):
        raise ValueError(f"cannot read resume checkpoint {config.resume!r} (no such readable file or run folder)")


def check_minibatches(config: TrainConfig) -> None:
    """The rollout (``n_envs * n_steps``) splits into minibatches of ``batch_size`` steps, each >= 2."""
    rollout, batch = config.n_envs * config.n_steps, config.minibatch_size
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


def check_memory_kwargs(memory: str, memory_kwargs: Any, hidden_size: int = 128) -> dict[str, Any]:
    """``memory_kwargs`` if ``memory``'s core takes them; ``ValueError`` otherwise.

    An unknown key is named with the accepted ones (:func:`fw_agents.memory.memory_options`); the values are checked
    by the core itself, a throwaway one of width ``hidden_size`` built over the policies' defaults
    on the ``meta`` device (no memory, no random numbers drawn).

    :return: The resolved options: :func:`fw_agents.policies.resolve_memory_kwargs` of these.
    """
    if not isinstance(memory_kwargs, dict):
        raise ValueError(f"memory_kwargs must be a dict, got {memory_kwargs!r}")
    accepted = memory_options(memory)
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
        raise ValueError(f"env {env_id!r}: cannot import module {module!r} ({one_line(error, 200)})") from None
