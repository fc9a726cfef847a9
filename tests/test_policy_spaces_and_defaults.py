"""The recurrent policy on every observation / action space SB3 supports, and the one set of
fast-weights defaults shared by every entry point."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.torch_layers import FlattenExtractor

import envs
from fw_agents.config import TrainConfig
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.memory import MEMORY_NAMES
from fw_agents.memory.options import FAST_WEIGHTS_OPTIONS
from fw_agents.policies import DEFAULT_MEMORY_KWARGS, FastWeightsPolicy, MlpEncoder, RecurrentMemoryPolicy

SMALL = dict(n_steps=8, batch_size=16, n_epochs=1)

OBSERVATION_SPACES = {
    "box-vector": spaces.Box(-1, 1, (3,), np.float32),
    "box-matrix": spaces.Box(-1, 1, (2, 3, 2), np.float32),
    "box-image": spaces.Box(0, 255, (3, 8, 8), np.uint8),  # scaled to [0, 1] by SB3, then flattened
    "discrete": spaces.Discrete(5),
    "multi-discrete": spaces.MultiDiscrete([2, 3, 4]),
    "multi-binary": spaces.MultiBinary(4),
    "multi-binary-2d": spaces.MultiBinary([2, 3]),
    "dict": spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32), "card": spaces.Discrete(3)}),
}
ACTION_SPACES = {
    "discrete": spaces.Discrete(3),
    "box": spaces.Box(-2, 2, (2,), np.float32),
    "multi-discrete": spaces.MultiDiscrete([3, 2]),
    "multi-binary": spaces.MultiBinary(2),
}


class SpaceEnv(gym.Env):
    """Random observations of ``observation_space``; episodes of 5 steps; reward 1 for action 0."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        reward = float(np.all(np.asarray(action) == 0))
        return self.observation_space.sample(), reward, self._t >= 5, False, {}


def _env(obs: str, act: str = "discrete", n_envs: int = 2):
    return make_vec_env(lambda: SpaceEnv(OBSERVATION_SPACES[obs], ACTION_SPACES[act]), n_envs=n_envs, seed=0)


def _policy_kwargs(memory: str) -> dict:
    return dict(memory=memory, hidden_size=8, features_extractor_kwargs=dict(features_dim=8))


@pytest.mark.parametrize("obs", OBSERVATION_SPACES)
@pytest.mark.parametrize("memory", MEMORY_NAMES)
def test_every_observation_space_with_every_core(obs, memory, one_thread):
    model = FastRecurrentPPO(RecurrentMemoryPolicy, _env(obs), policy_kwargs=_policy_kwargs(memory), seed=0,
                             device="cpu", **SMALL)  # fmt: skip
    model.learn(32)
    assert model.num_timesteps == 32
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.parametrize("obs", OBSERVATION_SPACES)
def test_encoder_input_is_sb3s_preprocessed_width(obs):
    """The encoder reads what SB3's preprocessing makes of the observation (one-hot, scaled)."""
    from stable_baselines3.common.preprocessing import preprocess_obs

    space = OBSERVATION_SPACES[obs]
    encoder = MlpEncoder(space, features_dim=4)
    batch = torch.as_tensor(np.stack([space.sample() for _ in range(3)])) if not isinstance(space, spaces.Dict) else {
        k: torch.as_tensor(np.stack([space[k].sample() for _ in range(3)])) for k in space.spaces
    }
    assert encoder(preprocess_obs(batch, space)).shape == (3, 4)


@pytest.mark.parametrize("act", ACTION_SPACES)
@pytest.mark.parametrize("algorithm", [RecurrentPPO, FastRecurrentPPO])
def test_every_action_space(act, algorithm, tmp_path, one_thread):
    model = algorithm(FastWeightsPolicy, _env("box-vector", act), policy_kwargs=dict(hidden_size=8), seed=0,
                      device="cpu", **SMALL)  # fmt: skip
    model.learn(32)
    obs = model.env.reset()
    actions, _ = model.predict(obs, episode_start=np.ones(2, dtype=bool))
    assert actions.shape == (2, *ACTION_SPACES[act].shape) and ACTION_SPACES[act].contains(actions[0])
    model.save(tmp_path / "m.zip")
    loaded = algorithm.load(tmp_path / "m.zip", device="cpu")
    again, _ = loaded.predict(obs, episode_start=np.ones(2, dtype=bool), deterministic=True)
    expected, _ = model.predict(obs, episode_start=np.ones(2, dtype=bool), deterministic=True)
    np.testing.assert_array_equal(again, expected)


def test_numpy_integer_feature_sizes_build_every_core():
    """SB3 sizes a MultiDiscrete space with a numpy integer (``sum(nvec)``), which ``nn.LSTM``
    rejects (sb3-contrib's own MlpLstmPolicy fails there): the cores take it as an int."""
    for memory in MEMORY_NAMES:
        policy_kwargs = dict(memory=memory, features_extractor_class=FlattenExtractor, features_extractor_kwargs={})
        model = FastRecurrentPPO(RecurrentMemoryPolicy, _env("multi-discrete"), policy_kwargs=policy_kwargs,
                                 device="cpu", **SMALL)  # fmt: skip
        assert type(model.policy.lstm_actor.core.input_size) is int


# ----------------------------------------------------------------------- one set of defaults
def _core(policy_class, **policy_kwargs):
    env = envs.CatchSB3VecEnv.from_id("Catch-v0", 2)
    return FastRecurrentPPO(policy_class, env, policy_kwargs=policy_kwargs, device="cpu", **SMALL).policy.lstm_actor.core


def _settings(core) -> tuple:
    return (type(core).__name__, core.hidden_size, core.fast_share, core.fast_lr, core.decay, core.inner_steps,
            core.identity_scale, core.bias_correction, core.layer_norm, core.mode)  # fmt: skip


def test_three_entry_points_build_the_same_fast_weights_core():
    from_policy = _settings(_core(FastWeightsPolicy))
    from_memory_policy = _settings(_core(RecurrentMemoryPolicy, memory="fastweights"))
    config = TrainConfig()
    assert config.memory == "fastweights"
    from_train_agent = _settings(_core(RecurrentMemoryPolicy, **config.policy_kwargs()))
    assert from_policy == from_memory_policy == from_train_agent
    defaults = DEFAULT_MEMORY_KWARGS["fastweights"]
    assert from_policy[2:8] == (defaults["fast_share"], None, defaults["decay"], defaults["inner_steps"],
                                defaults["identity_scale"], defaults["bias_correction"])  # fmt: skip
    assert defaults == {o.name: o.agent_default for o in FAST_WEIGHTS_OPTIONS if o.agent_default is not None}
    assert "fast_lr" not in defaults and "normalize" not in defaults


def test_train_agent_cli_defaults_are_the_policy_defaults():
    import train_agent

    args = train_agent.build_parser().parse_args([])
    defaults = DEFAULT_MEMORY_KWARGS["fastweights"]
    assert {key: getattr(args, key) for key in defaults} == defaults and args.fast_lr is None
    assert train_agent.build_parser().parse_args(["--bias-correction"]).bias_correction is True


def test_memory_kwargs_override_the_defaults_key_by_key():
    core = _core(FastWeightsPolicy, memory_kwargs=dict(decay=0.9))
    defaults = DEFAULT_MEMORY_KWARGS["fastweights"]
    assert (core.decay, core.fast_share, core.fast_lr) == (0.9, defaults["fast_share"], None)
    paper = _core(FastWeightsPolicy, memory_kwargs=dict(fast_lr=0.5))  # replaces the default share
    assert paper.fast_share is None and paper.fast_lr == paper.paper_fast_lr == 0.5
    assert _core(RecurrentMemoryPolicy, memory="lstm").__class__.__name__ == "LSTMCore"  # no fast options


def test_saved_model_keeps_its_resolved_core_options(tmp_path, monkeypatch):
    """A model records the options its core was built with, so a later change of the defaults
    does not change a saved model."""
    import fw_agents.policies as policies

    model = FastRecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("Catch-v0", 2), device="cpu", **SMALL)
    model.save(tmp_path / "m.zip")
    monkeypatch.setitem(policies.DEFAULT_MEMORY_KWARGS, "fastweights", dict(fast_share=123.0))
    loaded = FastRecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert _settings(loaded.policy.lstm_actor.core) == _settings(model.policy.lstm_actor.core)
    assert _core(FastWeightsPolicy).fast_share == 123.0  # the patched defaults do apply to new models


@pytest.mark.parametrize("memory_kwargs", [None, dict(fast_lr=0.001, decay=0.95, inner_steps=1)])
def test_checkpoints_from_before_the_share_load_with_the_papers_eta(memory_kwargs, tmp_path, monkeypatch):
    """Policies saved before η's unit was a choice computed with the paper's η (core default 0.5)."""
    model = FastRecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("Catch-v0", 2), device="cpu", **SMALL)
    model.policy_kwargs = {} if memory_kwargs is None else dict(memory_kwargs=memory_kwargs)  # as saved then
    with monkeypatch.context() as patch:  # nor did their state dicts carry the core's options
        patch.setattr(RecurrentMemoryPolicy, "get_extra_state", torch.nn.Module.get_extra_state)
        model.save(tmp_path / "old.zip")
    core = FastRecurrentPPO.load(tmp_path / "old.zip", device="cpu").policy.lstm_actor.core
    assert core.fast_share is None
    assert core.fast_lr == (0.5 if memory_kwargs is None else 0.001)


@pytest.mark.parametrize("normalize, unit", [(True, "fast_share"), (False, "fast_lr")])
def test_format_1_checkpoints_load_with_their_eta_translated(normalize, unit, tmp_path, monkeypatch):
    """Checkpoints of SAVED_CONFIG_FORMAT 1 saved ``normalize`` and ``fast_lr`` (in the state dict
    and the resolved policy_kwargs): they load, η in today's name, the same paper η, no warning."""
    import warnings

    from fw_agents.runs.resume import read_checkpoint

    legacy = dict(normalize=normalize, fast_lr=0.25, decay=0.9, inner_steps=1)
    model = FastRecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("Catch-v0", 2), device="cpu",
                             policy_kwargs=dict(memory_kwargs={unit: 0.25, "decay": 0.9}), **SMALL)  # fmt: skip
    model.policy_kwargs = dict(memory_kwargs=legacy)  # as FastRecurrentPPO saved them then
    with monkeypatch.context() as patch:
        patch.setattr(RecurrentMemoryPolicy, "get_extra_state",
                      lambda self: {"format": 1, "memory": "fastweights", "memory_kwargs": dict(legacy)})  # fmt: skip
        model.save(tmp_path / "v1.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # set_extra_state finds the same options: no warning
        core = FastRecurrentPPO.load(tmp_path / "v1.zip", device="cpu").policy.lstm_actor.core
    # options added since (bias_correction, identity_scale) are the core's defaults, as trained
    assert getattr(core, unit) == 0.25 and core.decay == 0.9 and core.bias_correction is False
    assert core.identity_scale == 0.05 and core.paper_fast_lr == model.policy.lstm_actor.core.paper_fast_lr
    # stock RecurrentPPO builds today's agent defaults for the keys the file does not name,
    # and says so, naming the one that differs
    with pytest.warns(UserWarning, match=r"memory_kwargs=\{'bias_correction': False\}"):
        core = RecurrentPPO.load(tmp_path / "v1.zip", device="cpu").policy.lstm_actor.core
    assert getattr(core, unit) == 0.25 and core.decay == 0.9
    # --resume reads the model's settings in today's names too (what TrainConfig accepts)
    settings = read_checkpoint(tmp_path / "v1.zip").settings["memory_kwargs"]
    assert settings == {unit: 0.25, "decay": 0.9, "inner_steps": 1}
    TrainConfig(memory_kwargs=settings).validate()
    with pytest.warns(UserWarning, match="fast_share"):  # and a real difference is still reported
        RecurrentPPO.load(tmp_path / "v1.zip", device="cpu", custom_objects=dict(
            policy_kwargs=dict(memory_kwargs=dict(fast_share=3.0 if normalize else 0.25, decay=0.9))))


def _stock_saved(tmp_path, policy_kwargs):
    """A fast-weights model trained and saved by stock sb3-contrib RecurrentPPO: its saved
    ``policy_kwargs`` are only what its user typed."""
    model = RecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("Catch-v0", 2), device="cpu",
                         policy_kwargs=policy_kwargs, **SMALL)  # fmt: skip
    model.save(tmp_path / "stock.zip")
    return model


@pytest.mark.parametrize("policy_kwargs", [None, dict(memory_kwargs=dict(decay=0.9))])
def test_stock_recurrent_ppo_checkpoint_loads_with_the_options_it_was_built_with(tmp_path, policy_kwargs):
    """The policy's state dict carries its resolved core options, so FastRecurrentPPO.load builds
    the core a stock RecurrentPPO trained (η as a share, not the pre-share paper η)."""
    model = _stock_saved(tmp_path, policy_kwargs)
    loaded = FastRecurrentPPO.load(tmp_path / "stock.zip", device="cpu")
    assert _settings(loaded.policy.lstm_actor.core) == _settings(model.policy.lstm_actor.core)
    assert loaded.policy.lstm_actor.core.fast_share == 0.5
    weights = loaded.policy.state_dict()
    for name, tensor in model.policy.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, weights[name]), name


def test_saved_core_options_are_plain_values_and_survive_later_default_changes(tmp_path, monkeypatch):
    """A NumPy scalar from a search is saved as a float (readable with weights_only=True); when
    the defaults later change, FastRecurrentPPO.load still builds the saved core and stock
    RecurrentPPO.load (which builds today's) warns, naming the keys that differ."""
    import fw_agents.policies as policies
    from fw_agents.runs.safe_load import read_saved_memory_config

    model = _stock_saved(tmp_path, dict(memory_kwargs=dict(fast_share=np.float64(0.25))))
    saved = read_saved_memory_config(tmp_path / "stock.zip")
    assert saved["format"] == 2 and saved["memory"] == "fastweights" and saved["memory_kwargs"]["fast_share"] == 0.25
    assert type(saved["memory_kwargs"]["fast_share"]) is float and "fast_lr" not in saved["memory_kwargs"]
    changed = {**policies.DEFAULT_MEMORY_KWARGS["fastweights"], "fast_lr": 0.5, "decay": 0.8}
    changed.pop("fast_share")
    monkeypatch.setitem(policies.DEFAULT_MEMORY_KWARGS, "fastweights", changed)
    loaded = FastRecurrentPPO.load(tmp_path / "stock.zip", device="cpu")
    assert _settings(loaded.policy.lstm_actor.core) == _settings(model.policy.lstm_actor.core)
    with pytest.warns(UserWarning, match=r"trained with memory='fastweights', memory_kwargs=\{'decay': 0.95\}"):
        RecurrentPPO.load(tmp_path / "stock.zip", device="cpu")


def test_checkpoint_without_saved_core_options_still_loads_strictly(tmp_path, monkeypatch):
    """Files from before the options were saved have no ``_extra_state``: SB3's strict
    load_state_dict accepts them (nothing to check) and stock RecurrentPPO.load does not warn."""
    import warnings

    with monkeypatch.context() as patch:
        patch.setattr(RecurrentMemoryPolicy, "get_extra_state", torch.nn.Module.get_extra_state)
        model = _stock_saved(tmp_path, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = RecurrentPPO.load(tmp_path / "stock.zip", device="cpu")
    weights = loaded.policy.state_dict()
    for name, tensor in model.policy.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, weights[name]), name


def test_policy_kwargs_given_to_load_win_over_the_saved_core_options(tmp_path):
    model = _stock_saved(tmp_path, None)
    kwargs = dict(model.policy_kwargs, memory_kwargs=dict(decay=0.5))
    with pytest.warns(UserWarning, match="'decay': 0.95"):  # the weights were trained with another core
        loaded = FastRecurrentPPO.load(tmp_path / "stock.zip", device="cpu", custom_objects=dict(policy_kwargs=kwargs))
    assert loaded.policy.lstm_actor.core.decay == 0.5


def test_a_shared_core_with_its_own_critic_extractor_is_refused():
    """``share_features_extractor=False`` with one core for both heads would leave the critic's
    extractor untrained while ``predict_values`` (the bootstrap values) reads it: refused, as
    stock RecurrentPPO refuses it; with ``critic="separate"`` it builds."""
    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2)
    kwargs = dict(hidden_size=8, share_features_extractor=False)
    with pytest.raises(ValueError, match="critic='separate'"):
        FastRecurrentPPO(RecurrentMemoryPolicy, env, policy_kwargs=kwargs)
    model = FastRecurrentPPO(RecurrentMemoryPolicy, env, policy_kwargs={**kwargs, "critic": "separate"})
    assert model.policy.vf_features_extractor is not model.policy.pi_features_extractor


@pytest.mark.parametrize("memory, key", [("fastweights", "fastlr"), ("lstm", "dropout"), ("alstm", "heads")])
def test_a_misspelt_core_option_names_the_accepted_ones(memory, key):
    from fw_agents.memory import make_memory, memory_options

    with pytest.raises(ValueError, match=f"unknown option '{key}' for memory '{memory}'; accepted: ") as error:
        make_memory(memory, 4, 8, **{key: 1})
    assert str(error.value).endswith(", ".join(memory_options(memory)) or "none")
    with pytest.raises(ValueError, match=r"^unknown memory \['lstm'\]; choose one of fastweights, "):
        make_memory(["lstm"], 4, 8)  # not a name at all
    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2)
    with pytest.raises(ValueError, match=f"unknown option '{key}'"):  # through policy_kwargs as well
        FastRecurrentPPO(RecurrentMemoryPolicy, env, policy_kwargs=dict(memory=memory, memory_kwargs={key: 1}))


@pytest.mark.parametrize("key", ["lstm_hidden_size", "n_lstm_layers", "lstm_kwargs", "enable_critic_lstm", "shared_lstm"])
def test_stock_lstm_policy_options_point_to_their_counterparts(key):
    from fw_agents.policies import _STOCK_LSTM_OPTIONS

    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 2)
    with pytest.raises(ValueError, match=f"^{key}=.* is an option of sb3-contrib's MlpLstmPolicy; here: ") as error:
        FastRecurrentPPO(RecurrentMemoryPolicy, env, policy_kwargs={key: 1})
    assert str(error.value).endswith(_STOCK_LSTM_OPTIONS[key])
