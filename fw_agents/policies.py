"""Recurrent actor-critic policies over any memory core, for sb3-contrib's ``RecurrentPPO``.

A core runs inside the unmodified ``RecurrentPPO`` as the policy's ``lstm_actor`` (and
``lstm_critic``): a :class:`fw_agents.state_slots.CoreAdapter`, which carries the core's whole
state in RecurrentPPO's LSTM slots (the contract is :mod:`fw_agents.state_slots`). Training
sequences are processed by one call of the core over ``[T, n_seq]`` with the episode starts as
a mask, and through :meth:`MemoryCore.outputs`, since the update drops the final state.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import BernoulliDistribution, CategoricalDistribution, Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from torch.distributions import Categorical

from fw_agents.config import CRITIC_MODES
from fw_agents.memory import make_memory, memory_class
from fw_agents.memory.options import agent_defaults, core_defaults, merge_options, translate_legacy_options
from fw_agents.state_slots import CoreAdapter, Slots
from fw_agents.validation import check_int

#: The core options every entry point starts from (:class:`FastWeightsPolicy`,
#: ``RecurrentMemoryPolicy(memory="fastweights")``, ``train_agent.py``); a caller's
#: ``memory_kwargs`` override them key by key (η by unit: a ``fast_lr`` replaces the default
#: ``fast_share``). Fast weights: the spec's agent defaults
#: (:data:`fw_agents.memory.options.FAST_WEIGHTS_OPTIONS`), η as the fast memory's share of
#: the drive (``fast_share``), so that one setting transfers across widths, episode lengths
#: and tasks; chosen by measurement (docs/fast_weights_defaults.md).
DEFAULT_MEMORY_KWARGS: dict[str, dict[str, Any]] = {"fastweights": agent_defaults()}


#: Version of the core options a policy saves in its state dict (``get_extra_state``); 2: η as
#: ``fast_lr`` or ``fast_share``. Format 1 (``normalize``) is read through
#: :func:`~fw_agents.memory.options.translate_legacy_options`.
SAVED_CONFIG_FORMAT = 2
#: The formats :meth:`RecurrentMemoryPolicy.set_extra_state` and ``FastRecurrentPPO.load`` read.
READABLE_CONFIG_FORMATS = (1, 2)


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    """The options as plain Python values (a NumPy scalar from a search becomes a float), so
    that ``torch.load(weights_only=True)`` reads them back; anything else is left out."""
    out = {}
    for key, value in options.items():
        value = value.item() if hasattr(value, "item") and getattr(value, "ndim", None) == 0 else value
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[str(key)] = value
    return out


def default_memory_kwargs(memory: str) -> dict[str, Any]:
    """A copy of :data:`DEFAULT_MEMORY_KWARGS` for ``memory`` (empty for cores without any)."""
    return dict(DEFAULT_MEMORY_KWARGS.get(memory, {}))


def resolve_memory_kwargs(
    memory: str, memory_kwargs: dict[str, Any] | None, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``memory_kwargs`` over ``base`` (default: :func:`default_memory_kwargs`), fast weights'
    saved legacy options translated and η merged by unit
    (:func:`~fw_agents.memory.options.merge_options`)."""
    base = default_memory_kwargs(memory) if base is None else dict(base)
    if memory != "fastweights":
        return {**base, **(memory_kwargs or {})}
    return merge_options(translate_legacy_options(base), translate_legacy_options(memory_kwargs or {}))


def saved_core_options(memory: Any, memory_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Saved core options (any readable format) in today's names, the core's defaults filled in
    for fast weights: what two saved configs are compared on."""
    if memory != "fastweights":
        return dict(memory_kwargs)
    return merge_options(core_defaults(), translate_legacy_options(memory_kwargs))


class MlpEncoder(BaseFeaturesExtractor):
    """The paper's agent input layer: the observation as a flat vector, then ``features_dim``
    ReLU units.

    Any observation space SB3 supports: the policy hands over what SB3's ``preprocess_obs``
    makes of it (``Discrete`` / ``MultiDiscrete`` one-hot, ``MultiBinary`` as floats, image
    ``Box`` scaled to [0, 1]), so the input width is SB3's own
    ``get_flattened_obs_dim``; a ``Dict`` space goes through SB3's ``CombinedExtractor``
    (its vector keys flattened, its image keys through ``NatureCNN``) first.

    :param observation_space: The observation space.
    :param features_dim: Number of ReLU units (paper: 128).
    :param cnn_output_dim: ``Dict`` spaces only: features per image key (as ``CombinedExtractor``).
    :param normalized_image: ``Dict`` spaces only: images are already in [0, 1] (as
        ``CombinedExtractor``).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        features_dim: int = 128,
        cnn_output_dim: int = 256,
        normalized_image: bool = False,
    ) -> None:
        super().__init__(observation_space, features_dim)
        flatten: nn.Module
        if isinstance(observation_space, spaces.Dict):
            flatten = CombinedExtractor(observation_space, cnn_output_dim, normalized_image)
            input_dim = flatten.features_dim
        else:
            flatten, input_dim = nn.Flatten(), get_flattened_obs_dim(observation_space)
        self.net = nn.Sequential(flatten, nn.Linear(int(input_dim), features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(observations)


def sample_categorical(logits: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """An action per row of ``logits [B, n]`` and its log-probability, ``([B], [B])``.

    The numbers of SB3's ``CategoricalDistribution`` (``get_actions``, then ``log_prob``),
    bitwise, random draws included: the same torch ops as ``torch.distributions.Categorical``
    (normalised logits, softmax, ``multinomial`` with replacement, gather), without building
    the distribution objects, which cost more than the ops at rollout sizes.
    """
    logits = logits - logits.logsumexp(dim=-1, keepdim=True)
    probs = torch.softmax(logits, dim=-1)
    actions = probs.argmax(dim=-1) if deterministic else torch.multinomial(probs, 1, True).squeeze(-1)
    return actions, logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


#: sb3-contrib's ``MlpLstmPolicy`` options and what stands for each here.
_STOCK_LSTM_OPTIONS = {
    "lstm_hidden_size": "hidden_size",
    "n_lstm_layers": "one core a head (add layers after it with net_arch)",
    "lstm_kwargs": "memory_kwargs (the core's options)",
    "enable_critic_lstm": "critic='separate' (a core of its own) or critic='shared' (the actor's)",
    "shared_lstm": "critic='shared' (the value head reads the actor's core, trained by both losses)",
}


class RecurrentMemoryPolicy(RecurrentActorCriticPolicy):
    """Recurrent actor-critic over any :mod:`fw_agents.memory` core, for ``RecurrentPPO``.

    Architecture (the paper's Catch agents): observation -> ``features_dim`` ReLU units
    -> memory core (``hidden_size``) -> softmax policy head and linear value head
    (plus optional ``net_arch`` layers in between, none by default).

    :param observation_space: Observation space.
    :param action_space: Action space.
    :param lr_schedule: Learning-rate schedule.
    :param memory: Core name, one of :data:`fw_agents.memory.MEMORY_NAMES`.
    :param hidden_size: Width of the memory core (paper: 128).
    :param memory_kwargs: Core options, e.g. ``dict(fast_share=2.0, decay=0.9, inner_steps=2)``;
        the keys it omits keep :data:`DEFAULT_MEMORY_KWARGS`. For the paper's absolute η
        (Eq. 1 as written) pass ``dict(fast_lr=0.5)``: it replaces the default ``fast_share``.
    :param critic: ``"shared"``: the value head reads the actor's core and its loss trains
        the core too (the paper's A3C agents); ``"separate"``: the critic has its own core.
    :param net_arch: Hidden layers between the core and the heads (default: none).
    :param activation_fn: Activation of ``net_arch`` layers.
    :param features_extractor_class: Input encoder (default :class:`MlpEncoder`).
    :param features_extractor_kwargs: Its kwargs (default ``dict(features_dim=128)``).
    :param kwargs: Passed on to :class:`~stable_baselines3.common.policies.ActorCriticPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        memory: str = "lstm",
        hidden_size: int = 128,
        memory_kwargs: dict[str, Any] | None = None,
        critic: str = "shared",
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = MlpEncoder,
        features_extractor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        memory_class(memory)  # a name in the registry (read now: a core registered at run time counts)
        for key in _STOCK_LSTM_OPTIONS.keys() & kwargs.keys():  # else ActorCriticPolicy's bare TypeError
            raise ValueError(f"{key}={kwargs[key]!r} is an option of sb3-contrib's MlpLstmPolicy; here: {_STOCK_LSTM_OPTIONS[key]}")
        if critic not in CRITIC_MODES:
            raise ValueError(f"critic must be one of {', '.join(CRITIC_MODES)}; got {critic!r}")
        if critic == "shared" and not kwargs.get("share_features_extractor", True):
            # A shared core reads the actor's features only: the critic's own extractor would
            # never be trained, yet predict_values (RecurrentPPO's bootstrap values) reads it.
            raise ValueError(
                "share_features_extractor=False needs critic='separate' (critic='shared' runs the "
                "value head on the actor's core, which reads the actor's features)"
            )
        check_int("hidden_size", hidden_size)
        if features_extractor_class is MlpEncoder and features_extractor_kwargs is None:
            features_extractor_kwargs = dict(features_dim=128)
        self.memory = memory
        self.memory_kwargs = resolve_memory_kwargs(memory, memory_kwargs)
        self.critic_mode = critic
        self.lstm_output_dim = hidden_size  # read by _build_mlp_extractor
        # Skip RecurrentActorCriticPolicy.__init__, which builds nn.LSTM cores.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch if net_arch is not None else [],
            activation_fn=activation_fn,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            **kwargs,
        )
        self.lstm_kwargs = self.memory_kwargs
        # Our critic is ``critic_mode``; ``lstm_critic`` is None exactly when it is "shared"
        # (what the buffer goes by: :func:`fw_agents.state_slots.critic_has_own_state`).
        # sb3-contrib's ``shared_lstm`` is not set: it means a critic reading the actor's LSTM
        # *detached*, which ours is not, and only the methods overridden here read it.
        self.enable_critic_lstm = critic == "separate"  # sb3-contrib's meaning: own critic core
        self.critic = None
        self.lstm_actor = CoreAdapter(make_memory(memory, self.features_dim, hidden_size, **self.memory_kwargs))
        self.lstm_critic = (
            CoreAdapter(make_memory(memory, self.features_dim, hidden_size, **self.memory_kwargs))
            if critic == "separate"
            else None
        )
        self.lstm_hidden_state_shape = (1, 1, self.lstm_actor.hidden_size)  # for predict()
        # torch's default optimizer step on CPU is a Python loop over the parameters, a sizeable
        # part of a PPO minibatch at these sizes. Unless the caller chose an implementation
        # (``optimizer_kwargs=dict(fused=False)`` restores torch's default): Adam's fused kernel
        # (the same results up to float rounding, tested; about 3x faster than the multi-tensor
        # step, itself about 1.2x faster than the loop), else the multi-tensor step.
        # A copy: SB3 hands over the caller's own dict (also the model's ``policy_kwargs``,
        # which is saved), and the choice below must not leak into it.
        self.optimizer_kwargs = dict(self.optimizer_kwargs)
        chosen = {"fused", "foreach"} & self.optimizer_kwargs.keys()
        if self.optimizer_class in (torch.optim.Adam, torch.optim.AdamW) and not chosen:
            self.optimizer_kwargs["fused"] = True
        elif "foreach" in inspect.signature(self.optimizer_class).parameters and not chosen:
            self.optimizer_kwargs["foreach"] = True
        # Optimizer again, now that the cores exist (as RecurrentActorCriticPolicy does).
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        self.register_load_state_dict_pre_hook(self._accept_missing_extra_state)

    # ------------------------------------------------------------------ the saved core config
    # The policy's state dict carries its core's resolved options (``_extra_state``), so a
    # checkpoint says how its core was built whichever algorithm class saved it: a stock
    # ``RecurrentPPO`` saves only the ``policy_kwargs`` its user typed, which leave the
    # defaults of the day implicit. :meth:`FastRecurrentPPO.load` builds the core from them.

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": SAVED_CONFIG_FORMAT, "memory": self.memory, "memory_kwargs": _plain(self.memory_kwargs)}

    def set_extra_state(self, state: Any) -> None:
        """Warn when the checkpoint's core was built with other options than this policy's
        (``mode`` aside: it picks an implementation, not the maths). ``None``: a checkpoint
        from before the options were saved."""
        if not isinstance(state, dict) or state.get("format") not in READABLE_CONFIG_FORMATS:
            return
        saved = saved_core_options(state.get("memory"), state.get("memory_kwargs", {}))
        ours = saved_core_options(self.memory, _plain(self.memory_kwargs))
        keys = sorted(k for k in {*saved, *ours} - {"mode"} if saved.get(k) != ours.get(k))
        if state.get("memory") != self.memory or keys:
            warnings.warn(
                f"these weights were trained with memory={state.get('memory')!r}, memory_kwargs="
                f"{ {k: saved.get(k) for k in keys} }, but this policy was built with memory={self.memory!r}, "
                f"memory_kwargs={ {k: ours.get(k) for k in keys} } (fw_agents.FastRecurrentPPO.load "
                "builds the core as saved)",
                stacklevel=2,
            )

    @staticmethod
    def _accept_missing_extra_state(module, state_dict, prefix, *args: Any) -> None:
        state_dict.setdefault(prefix + "_extra_state", None)  # older checkpoints: nothing to check

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            memory=self.memory,
            hidden_size=self.lstm_output_dim,
            memory_kwargs=self.memory_kwargs,
            critic=self.critic_mode,
        )
        return data

    @staticmethod
    def _process_sequence(  # type: ignore[override]
        features: torch.Tensor, lstm_states: Slots, episode_starts: torch.Tensor, lstm: CoreAdapter
    ) -> tuple[torch.Tensor, Slots]:
        """One core call over the whole ``[T, n_seq]`` batch (no per-step Python loop)."""
        return lstm(features, lstm_states, episode_starts)

    def _latents(
        self, obs: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor, return_states: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, RNNStates]:
        """Actor and critic latents and the new states (None for ``return_states=False``),
        for :meth:`forward` and :meth:`evaluate_actions`."""
        features = self.extract_features(obs)
        pi_features, vf_features = (features, features) if self.share_features_extractor else features
        latent_pi, states_pi = self.lstm_actor(pi_features, lstm_states.pi, episode_starts, return_states)
        if self.lstm_critic is None:  # shared core: the value loss trains it too (A3C)
            latent_vf, states_vf = latent_pi, states_pi
        else:
            latent_vf, states_vf = self.lstm_critic(vf_features, lstm_states.vf, episode_starts, return_states)
        if len(self.mlp_extractor.policy_net) or len(self.mlp_extractor.value_net):  # net_arch layers
            latent_pi = self.mlp_extractor.forward_actor(latent_pi)
            latent_vf = self.mlp_extractor.forward_critic(latent_vf)
        return latent_pi, latent_vf, RNNStates(states_pi, states_vf)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> Distribution:
        if type(self.action_dist) is CategoricalDistribution:
            # SB3's own construction minus torch's argument validation (a per-call cost of the
            # order of the core step); the logits are ours and always valid.
            self.action_dist.distribution = Categorical(logits=self.action_net(latent_pi), validate_args=False)
            return self.action_dist
        return super()._get_action_dist_from_latent(latent_pi)

    def forward(
        self,
        obs: torch.Tensor,
        lstm_states: RNNStates,
        episode_starts: torch.Tensor,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RNNStates]:
        latent_pi, latent_vf, states = self._latents(obs, lstm_states, episode_starts)
        values = self.value_net(latent_vf)
        if type(self.action_dist) is CategoricalDistribution:  # the rollout step: fewest ops
            actions, log_prob = sample_categorical(self.action_net(latent_pi), deterministic)
        else:
            distribution = self._get_action_dist_from_latent(latent_pi)
            actions = distribution.get_actions(deterministic=deterministic)
            log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob, states

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent_pi, latent_vf, _ = self._latents(obs, lstm_states, episode_starts, return_states=False)
        distribution = self._get_action_dist_from_latent(latent_pi)
        if isinstance(distribution, BernoulliDistribution):
            # RecurrentPPO's buffer hands MultiBinary actions back in the space's integer dtype,
            # which torch's Bernoulli log-prob rejects (the stock MlpLstmPolicy crashes there)
            actions = actions.to(latent_pi.dtype)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def predict_values(self, obs: torch.Tensor, lstm_states: Slots, episode_starts: torch.Tensor) -> torch.Tensor:
        # RecurrentPPO passes the critic's slots; with a shared core they are the actor's.
        features = super(ActorCriticPolicy, self).extract_features(obs, self.vf_features_extractor)
        core = self.lstm_critic if self.lstm_critic is not None else self.lstm_actor
        latent_vf, _ = core(features, lstm_states, episode_starts, return_slots=False)
        if len(self.mlp_extractor.value_net):
            latent_vf = self.mlp_extractor.forward_critic(latent_vf)
        return self.value_net(latent_vf)


class FastWeightsPolicy(RecurrentMemoryPolicy):
    """:class:`RecurrentMemoryPolicy` with the fast-weights core (``memory="fastweights"``).

    With no options it uses :data:`DEFAULT_MEMORY_KWARGS` (η as the fast memory's share of the
    drive, ``fast_share``), the same core as ``train_agent.py``'s defaults. Fast-weight
    hyper-parameters go in ``memory_kwargs``, each overriding its default:
    ``RecurrentPPO(FastWeightsPolicy, env, policy_kwargs=dict(memory_kwargs=dict(fast_share=2.0)))``;
    the paper's absolute η: ``memory_kwargs=dict(fast_lr=0.5)``.
    """

    def __init__(self, *args: Any, memory: str = "fastweights", **kwargs: Any) -> None:
        super().__init__(*args, memory=memory, **kwargs)
