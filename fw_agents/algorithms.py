"""``FastRecurrentPPO``: sb3-contrib's ``RecurrentPPO`` with a rollout buffer for large states.

The algorithm, the sampling and the numbers are the stock ones (a test trains both
side by side and compares every parameter). Two things change: rollouts run under
``torch.inference_mode`` (see :meth:`FastRecurrentPPO.collect_rollouts`), and the
buffer's bookkeeping of the recurrent state, which matters when the state is big: the
fast-weights state ``(h, A)`` is ``H + H^2`` floats per environment and step. How a
state is laid out in the buffer, and why the critic's copy may be skipped, is the contract of
:mod:`fw_agents.state_slots`, which stores it here.

What the stock ``RecurrentRolloutBuffer`` does with it, and what this one does:

* ``reset``: allocates four state arrays (actor and critic ``h``/``c``) every rollout;
  here they are allocated once and overwritten.
* ``add``: copies each slot twice (``np.array(t.cpu().numpy())``); here once, and the
  critic's copy is skipped when the policy's update never reads it (a shared critic).
* ``get``: swaps and flattens the whole state arrays; here they stay ``[n_steps, n_envs, ...]``.
* ``_get_samples``: indexes ``states[batch_inds]`` (a copy of every row of the minibatch)
  before picking the sequence starts, and pads every field through a Python list of one
  tensor per sequence; here only the sequence-start rows of the state are gathered, and
  each field is padded by one vectorised gather.

The stock ``RecurrentPPO`` keeps working with every policy of :mod:`fw_agents.policies`;
models saved by either class load in either.
"""

from __future__ import annotations

import contextvars
import inspect
import io
import pickle
import zipfile
from collections.abc import Generator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RecurrentRolloutBufferSamples, RNNStates
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
import torch as th

from fw_agents.memory.options import core_defaults
from fw_agents.policies import FastWeightsPolicy, RecurrentMemoryPolicy, resolve_memory_kwargs, saved_core_options
from fw_agents.runs.safe_load import read_saved_memory_config, safe_custom_objects
from fw_agents.state_slots import CoreAdapter, SlotStore, critic_has_own_state

#: The core options saved in the policy's state dict of the checkpoint being loaded (set by
#: :meth:`FastRecurrentPPO.load` for the ``_setup_model`` that SB3's ``load`` calls).
_SAVED_MEMORY_CONFIG: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "fw_agents_saved_memory_config", default=None
)



class CompactRecurrentRolloutBuffer(RecurrentRolloutBuffer):
    """Drop-in ``RecurrentRolloutBuffer`` that stores and samples recurrent states without bulk copies.

    Same constructor as :class:`~sb3_contrib.common.recurrent.buffers.RecurrentRolloutBuffer`;
    ``hidden_state_shape`` is ``(n_steps, num_layers, n_envs, hidden_size)``. The states live in
    a :class:`fw_agents.state_slots.SlotStore` (``slots``), whose layout is the contract of
    :mod:`fw_agents.state_slots`.

    :param critic_state: Store the critic's states too; False when the policy's update never
        reads them (:func:`fw_agents.state_slots.critic_has_own_state`), as ``FastRecurrentPPO``
        passes it. Minibatches then carry the actor's states as the critic's.
    """

    def __init__(self, *args: Any, critic_state: bool = True, **kwargs: Any) -> None:
        self.critic_state = critic_state
        self.slots: SlotStore | None = None
        super().__init__(*args, **kwargs)

    def reset(self) -> None:
        RolloutBuffer.reset(self)
        # allocated once, overwritten every rollout
        if self.slots is None or self.slots.hidden_state_shape != tuple(self.hidden_state_shape):
            self.slots = SlotStore(self.hidden_state_shape, self.critic_state)

    def add(self, *args, lstm_states: RNNStates, **kwargs) -> None:
        self.slots.add(self.pos, lstm_states)
        RolloutBuffer.add(self, *args, **kwargs)

    def get(self, batch_size: int | None = None) -> Generator[RecurrentRolloutBufferSamples, None, None]:
        assert self.full, "Rollout buffer must be full before sampling from it"
        if not self.generator_ready:
            # flatten env-major, keeping each env's sequence order (as the stock buffer)
            for name in ["observations", "actions", "values", "log_probs", "advantages", "returns", "episode_starts"]:
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
        total = self.buffer_size * self.n_envs
        if batch_size is None:
            batch_size = total
        # The stock sampling: one random split of the env-major order, then contiguous minibatches.
        split_index = np.random.randint(total)
        indices = np.arange(total)
        indices = np.concatenate((indices[split_index:], indices[:split_index]))
        env_change = np.zeros((self.buffer_size, self.n_envs))
        env_change[0, :] = 1.0
        env_change = self.swap_and_flatten(env_change)
        for start in range(0, total, batch_size):
            yield self._get_samples(indices[start : start + batch_size], env_change)

    def _get_samples(
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: VecNormalize | None = None
    ) -> RecurrentRolloutBufferSamples:
        # The stock sequencing (a sequence starts at every episode start and env change),
        # padded with one vectorised gather instead of a Python list of per-sequence tensors.
        seq_start = np.logical_or(self.episode_starts[batch_inds], env_change[batch_inds]).flatten()
        seq_start[0] = True
        starts = np.flatnonzero(seq_start)
        lengths = np.diff(np.append(starts, len(batch_inds)))
        offsets = np.arange(lengths.max())
        valid = offsets[None, :] < lengths[:, None]  # [n_seq, max_length]
        rows = batch_inds[(starts[:, None] + offsets[None, :])[valid]]  # buffer rows, padded order
        self.seq_start_indices = starts

        def pad(array: np.ndarray) -> th.Tensor:  # [n_seq, max_length, ...], zero-padded
            out = np.zeros((*valid.shape, *array.shape[1:]), dtype=array.dtype)
            out[valid] = array[rows]
            return self.to_torch(out, copy=False)

        def pad_and_flatten(array: np.ndarray) -> th.Tensor:
            return pad(array).flatten()

        padded_batch_size = valid.size
        # Flat (env-major) index -> (step, env): gather just the rows that start a sequence.
        first = batch_inds[starts]
        steps, envs = first % self.buffer_size, first // self.buffer_size
        return RecurrentRolloutBufferSamples(
            observations=pad(self.observations).reshape((padded_batch_size, *self.obs_shape)),
            actions=pad(self.actions).reshape((padded_batch_size, *self.actions.shape[1:])),
            old_values=pad_and_flatten(self.values),
            old_log_prob=pad_and_flatten(self.log_probs),
            advantages=pad_and_flatten(self.advantages),
            returns=pad_and_flatten(self.returns),
            lstm_states=self.slots.initial_states(steps, envs, self.device),
            episode_starts=pad_and_flatten(self.episode_starts),
            mask=self.to_torch(valid.astype(np.float32).flatten(), copy=False),
        )


class FastRecurrentPPO(RecurrentPPO):
    """``RecurrentPPO`` with :class:`CompactRecurrentRolloutBuffer` (Box observations) and
    rollouts under ``torch.inference_mode``.

    Same arguments, behaviour and results as :class:`sb3_contrib.RecurrentPPO`; faster when the
    policy's recurrent state is large (e.g. :class:`fw_agents.policies.FastWeightsPolicy`).
    Dict observation spaces keep the stock buffer.

    With a :class:`~fw_agents.policies.RecurrentMemoryPolicy`, the core options the policy
    resolved (its defaults filled in) are written back into ``policy_kwargs``, so a saved model
    rebuilds the same core even if the defaults change later.

    ``policy`` may also be given by name, as SB3's policies are: ``"FastWeightsPolicy"``,
    ``"RecurrentMemoryPolicy"`` (and sb3-contrib's ``"MlpLstmPolicy"``, ...; the zoo's YAML
    names policies so).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **RecurrentPPO.policy_aliases,
        "RecurrentMemoryPolicy": RecurrentMemoryPolicy,
        "FastWeightsPolicy": FastWeightsPolicy,
    }

    def __init__(self, *args: Any, _init_setup_model: bool = True, **kwargs: Any) -> None:
        # SB3's ``load`` constructs with ``_init_setup_model=False``, then sets the saved
        # attributes and calls ``_setup_model``: the one moment a checkpoint's kwargs are seen.
        self._loading_checkpoint = not _init_setup_model
        super().__init__(*args, _init_setup_model=_init_setup_model, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_loading_checkpoint"]

    @classmethod
    def load(  # type: ignore[override]
        cls,
        path: str | Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        *,
        trusted: bool = False,
        **kwargs: Any,
    ) -> FastRecurrentPPO:
        """SB3's ``load``, without running code from the file: its pickled values are decoded
        by :mod:`fw_agents.runs.safe_load`'s allowlist (spaces, arrays, schedules, SB3 / fw_agents
        policy classes) and handed to SB3 as ``custom_objects``, so SB3 unpickles nothing.

        :param trusted: Let SB3 unpickle the file as it would (needed for, e.g., a lambda
            learning-rate schedule, unless ``custom_objects`` replaces it). Only for files you
            made or trust. Keyword-only: SB3's own arguments keep their positions.
        :param custom_objects: Your own replacements; they win over the decoded values, and
            the keys they replace are not decoded (as SB3 does not unpickle them), so a
            schedule the file cannot give safely may be replaced, as SB3's docs show.
        :raises fw_agents.runs.safe_load.UnsafeModelError: The file needs a type outside the allowlist.

        A memory policy's core is rebuilt with the options saved in its state dict (whichever
        class saved the file; see ``docs/runs.md``), unless ``custom_objects`` replaces the
        ``policy_kwargs``.
        :raises ValueError: The file is not a readable model.

        The other arguments are SB3's.
        """
        objects = {**safe_custom_objects(path, trusted, replaced=custom_objects or {}), **(custom_objects or {})}
        # the core as the policy saved it, unless the caller replaces the policy's kwargs
        saved = None if "policy_kwargs" in (custom_objects or {}) else read_saved_memory_config(path)
        token = _SAVED_MEMORY_CONFIG.set(saved)
        try:
            return super().load(
                path, env=env, device=device, custom_objects=objects, print_system_info=print_system_info,
                force_reset=force_reset, **kwargs,
            )  # fmt: skip
        except th.cuda.OutOfMemoryError:  # a RuntimeError, but the device's, not the file's: not "bad input"
            raise
        except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError) as error:
            # a damaged tensor entry (policy.pth, the optimizer's, pytorch_variables.pth) or a missing key:
            # torch.load / load_state_dict raise these, which are not the caller's bug but a bad file
            text = " ".join(str(error).split())
            raise ValueError(
                f"cannot load model {str(path)!r}: {type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"
            ) from None
        finally:
            _SAVED_MEMORY_CONFIG.reset(token)

    def _setup_model(self) -> None:
        if self._loading_checkpoint:
            self.policy_kwargs = _checkpoint_policy_kwargs(
                self.policy_class, self.policy_kwargs, _SAVED_MEMORY_CONFIG.get()
            )
        super()._setup_model()
        if isinstance(self.policy, RecurrentMemoryPolicy):
            self.policy_kwargs = {**self.policy_kwargs, "memory_kwargs": dict(self.policy.memory_kwargs)}
        stock = self.rollout_buffer
        if type(stock) is RecurrentRolloutBuffer:
            self.rollout_buffer = CompactRecurrentRolloutBuffer(
                self.n_steps,
                self.observation_space,
                self.action_space,
                stock.hidden_state_shape,
                self.device,
                gamma=self.gamma,
                gae_lambda=self.gae_lambda,
                n_envs=self.n_envs,
                critic_state=critic_has_own_state(self.policy),
            )

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """The stock rollout, under ``torch.inference_mode`` instead of its ``no_grad``.

        Inference mode also drops the version counters and view tracking that ``no_grad`` keeps
        on every op, which are a sizeable part of a rollout step of small tensors (about a tenth
        of the rollout's time for the fast-weights agent on Catch). Nothing of the rollout needs
        autograd: the buffer keeps numpy copies, and the update recomputes everything from them.
        Callbacks run with inference mode switched off, so they may evaluate, save or even train
        as usual (the rollout's own tensors they find in ``locals`` are inference tensors). The
        env steps with it off too (under ``no_grad``, as in the stock rollout): an env that keeps
        its state in torch tensors must not get inference tensors back, which it could no longer
        update in place outside the rollout (its ``reset``, ``evaluate_policy``).

        A ``KeyboardInterrupt`` during the rollout leaves ``num_timesteps`` at the last update's step
        (the rollout is dropped), so the model saved on it resumes on a rollout boundary.
        """
        writers = self._slot_writers(rollout_buffer)
        trained_steps = self.num_timesteps

        def arm(ahead: int) -> None:
            # the next policy step's new state is the one stored before step pos + ahead: it is
            # written there (CoreAdapter.next_slots_out) and SlotStore.add then copies nothing
            row = rollout_buffer.pos + ahead
            for adapter, critic in writers:
                adapter.next_slots_out = rollout_buffer.slots.row(row, critic) if row < rollout_buffer.buffer_size else None

        callback_outside = _OutsideInferenceMode(callback, arm if writers else None)
        try:
            with th.inference_mode():
                return super().collect_rollouts(_EnvOutsideInferenceMode(env), callback_outside, rollout_buffer, n_rollout_steps)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            # Ctrl-C (or SIGTERM, see fw_agents.runs.signals) mid-rollout: the partial rollout is
            # dropped, never trained on. The weights are still those of the last completed update, so the
            # step count goes back to that update's (a rollout boundary): a checkpoint saved now is the
            # model as it was there, and a resumed learn, which runs whole rollouts, ends exactly at its
            # target instead of past it. (An interrupt during the update itself keeps the rollout's end:
            # the weights are then partly updated; see docs/runs.md.)
            self.num_timesteps = trained_steps
            raise
        finally:
            for adapter, _ in writers:  # never armed outside the rollout (a later predict must get its own tensors)
                adapter.next_slots_out = None

    def _slot_writers(self, rollout_buffer: RolloutBuffer) -> list[tuple[CoreAdapter, bool]]:
        """The policy's cores that write their rollout states straight into ``rollout_buffer``
        (``(adapter, critic's slots)``): our policy and buffer, on the CPU (the buffer's rows are
        host memory), one layer of slots. Otherwise none: the buffer copies the states in."""
        slots = getattr(rollout_buffer, "slots", None)
        if slots is None or self.device.type != "cpu" or slots.shape[3] != 1:
            return []
        writers = [(self.policy.lstm_actor, False)] if isinstance(self.policy.lstm_actor, CoreAdapter) else []
        if slots.vf is not None and isinstance(getattr(self.policy, "lstm_critic", None), CoreAdapter):
            writers.append((self.policy.lstm_critic, True))
        return writers


def _checkpoint_policy_kwargs(
    policy_class: Any, policy_kwargs: dict[str, Any], saved: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``policy_kwargs`` to rebuild a checkpoint's policy with: its core options as the
    policy saved them in its state dict (``saved``, exact whoever saved the file), else, for
    files from before that, with the options of a fast-weights policy saved before η's unit
    was a choice made explicit (the paper's η, as it was trained with). Legacy names
    (``normalize``) are translated (:func:`~fw_agents.memory.options.translate_legacy_options`)."""
    if not (isinstance(policy_class, type) and issubclass(policy_class, RecurrentMemoryPolicy)):
        return policy_kwargs
    memory = policy_kwargs.get("memory", inspect.signature(policy_class).parameters["memory"].default)
    memory_kwargs = policy_kwargs.get("memory_kwargs") or {}
    # An option a file does not name did not exist when it was saved (files from before the
    # state dict carried the options: η too, then the paper's): the core's default, what it was
    # trained with, fills it in, never today's agent default.
    if saved is not None:
        memory_kwargs = resolve_memory_kwargs(memory, saved_core_options(saved["memory"], saved["memory_kwargs"]),
                                              base=memory_kwargs)  # fmt: skip
    else:
        memory_kwargs = resolve_memory_kwargs(memory, memory_kwargs, base=core_defaults() if memory == "fastweights" else {})
    return {**policy_kwargs, "memory_kwargs": memory_kwargs}


class _Forwarding:
    """Wraps ``inner``: every attribute a subclass does not define is ``inner``'s own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class _EnvOutsideInferenceMode(_Forwarding):
    """The rollout's env, its ``step`` run with inference mode off and autograd off (the stock
    rollout's ``no_grad``)."""

    def step(self, actions: np.ndarray) -> Any:
        with th.inference_mode(False), th.no_grad():
            return self.inner.step(actions)


class _OutsideInferenceMode(_Forwarding):
    """Forwards the calls that ``collect_rollouts`` makes on its callback, with inference mode off.

    :param arm: Called after ``on_rollout_start`` with 1 and after ``on_step`` with 2: the next
        call on the policy is then the rollout's next step, whose new state is stored before step
        ``pos + ahead`` (the callbacks, which may evaluate with the same policy, have run).
    """

    def __init__(self, inner: Any, arm: Any = None) -> None:
        super().__init__(inner)
        self.arm = arm

    def on_rollout_start(self) -> None:
        with th.inference_mode(False):
            self.inner.on_rollout_start()
        if self.arm is not None:
            self.arm(1)

    def update_locals(self, locals_: dict[str, Any]) -> None:
        with th.inference_mode(False):
            self.inner.update_locals(locals_)

    def on_step(self) -> bool:
        with th.inference_mode(False):
            going_on = self.inner.on_step()
        if going_on and self.arm is not None:
            self.arm(2)
        return going_on

    def on_rollout_end(self) -> None:
        with th.inference_mode(False):
            self.inner.on_rollout_end()
