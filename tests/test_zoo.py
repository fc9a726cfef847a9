"""The rl-baselines3-zoo plugin (fw_agents.zoo): train, optimize, enjoy through the zoo's own entry
points, the shipped YAML, and a sampler that searches η, λ and S without dropping policy_kwargs."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rl_zoo3")

import gymnasium as gym  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor  # noqa: E402

import envs  # noqa: E402
from envs.sb3 import CatchSB3VecEnv  # noqa: E402
from fw_agents import zoo  # noqa: E402
from fw_agents.algorithms import FastRecurrentPPO  # noqa: E402
from fw_agents.policies import DEFAULT_MEMORY_KWARGS  # noqa: E402
from fw_agents.memory import MEMORY_NAMES  # noqa: E402
from fw_agents.policies import RecurrentMemoryPolicy  # noqa: E402

ALGOS = ("fast_recurrent_ppo", "ppo_lstm")
#: Small sizes for every run: 2 envs, 32-step rollouts, a 16-unit core.
TINY = ["n_envs:2", "n_steps:32", "batch_size:32", "n_epochs:1"]
TINY_POLICY = "dict(memory='fastweights', hidden_size=16, features_extractor_kwargs=dict(features_dim=16), {})"


def _core(model):
    return model.policy.lstm_actor.core


def _fast_options(model) -> dict:
    core = _core(model)
    return dict(fast_lr=core.fast_lr, fast_share=core.fast_share, decay=core.decay, inner_steps=core.inner_steps)


def _train(tmp_path: Path, *args: str, algo: str = zoo.ALGO) -> None:
    zoo.main(["train", "--algo", algo, "--env", "CatchBlind16-v0", "-n", "256", "-f",
              str(tmp_path / "logs"), "--seed", "1", "--num-threads", "1", "--verbose", "0", *args])  # fmt: skip


def test_train_through_the_zoo_keeps_the_core_options(tmp_path, one_thread):
    memory_kwargs = "memory_kwargs=dict(fast_share=2.0, decay=0.9, inner_steps=2)"
    _train(tmp_path, "--eval-freq", "128", "--eval-episodes", "2",
           "--hyperparams", *TINY, f"policy_kwargs:{TINY_POLICY.format(memory_kwargs)}")  # fmt: skip
    run = tmp_path / "logs" / "fast_recurrent_ppo" / "CatchBlind16-v0_1"
    model = FastRecurrentPPO.load(run / "CatchBlind16-v0.zip", device="cpu")  # loads with the project's class
    assert model.num_timesteps == 256 and model.n_steps == 32 and model.n_envs == 2
    assert isinstance(model.policy, RecurrentMemoryPolicy) and _core(model).hidden_size == 16
    # η, λ, S from the override
    assert _fast_options(model) == dict(fast_lr=None, fast_share=2.0, decay=0.9, inner_steps=2)
    assert (run / "best_model.zip").is_file() and (run / "evaluations.npz").is_file()
    monitor = (run / "0.monitor.csv").read_text().splitlines()
    assert monitor[1] == "r,l,t,caught" and len(monitor) > 10  # the batched envs' episodes, logged

    # the zoo's enjoy, through the same plugin
    zoo.main(["enjoy", "--algo", "fast_recurrent_ppo", "--env", "CatchBlind16-v0", "-f", str(tmp_path / "logs"),
              "--no-render", "-n", "20", "--verbose", "0"])  # fmt: skip


def test_train_reads_a_given_conf_file(tmp_path, one_thread):
    conf = yaml.safe_load((zoo.HYPERPARAMS_DIR / "fast_recurrent_ppo.yml").read_text())["CatchBlind16-v0"]
    # an old YAML, η's unit as normalize: translated (normalize=False: the paper's η, fast_lr)
    conf["policy_kwargs"] = TINY_POLICY.format("memory_kwargs=dict(fast_lr=0.25, decay=0.8, normalize=False)")
    (tmp_path / "mine.yml").write_text(yaml.safe_dump({"CatchBlind16-v0": conf}))
    _train(tmp_path, "--eval-freq", "-1", "-conf", str(tmp_path / "mine.yml"), "--hyperparams", *TINY)
    model = FastRecurrentPPO.load(tmp_path / "logs/fast_recurrent_ppo/CatchBlind16-v0_1/CatchBlind16-v0.zip")
    assert _fast_options(model) == dict(fast_lr=0.25, fast_share=None, decay=0.8, inner_steps=1)
    assert model.lr_schedule(1) == conf["learning_rate"] and model.ent_coef == conf["ent_coef"]


@pytest.mark.parametrize("algo", ALGOS)
def test_shipped_conf_file(algo):
    shipped = zoo.HYPERPARAMS_DIR / f"{algo}.yml"
    assert zoo.shipped_conf_file(["--algo", algo, "--env", "CatchFlicker24-v0"]) == shipped
    assert zoo.shipped_conf_file(["--env", "CatchBlind24-v0", "--algo", algo, "-n", "5"]) == shipped
    assert zoo.shipped_conf_file(["--algo", algo, "--env", "CatchBlind24-v0", "-conf", "x.yml"]) is None
    # an unlisted id: fast_recurrent_ppo.yml's `default` entry (the zoo has no file for it), ppo_lstm the zoo's own file
    expected = shipped if algo == "fast_recurrent_ppo" else None
    assert zoo.shipped_conf_file(["--algo", algo, "--env", "CartPole-v1"]) == expected
    assert zoo.shipped_conf_file(["--algo", "ppo", "--env", "Catch-v0"]) is None


def test_main_needs_a_command():
    with pytest.raises(SystemExit, match="usage"):
        zoo.main(["plot_train"])


def _experiment(tmp_path: Path, algo: str, env_id: str, hyperparams: dict | None = None) -> zoo.ExperimentManager:
    """The zoo's experiment manager (as ``train`` builds it) for the shipped YAML, no evaluation."""
    zoo.register()
    return zoo.ExperimentManager(argparse.Namespace(), algo, env_id, str(tmp_path), n_timesteps=256, eval_freq=-1,
                                 hyperparams=hyperparams, config=str(zoo.HYPERPARAMS_DIR / f"{algo}.yml"))  # fmt: skip


@pytest.mark.parametrize("algo", ALGOS)
def test_every_shipped_entry_builds_its_model(tmp_path, algo):
    table = yaml.safe_load((zoo.HYPERPARAMS_DIR / f"{algo}.yml").read_text())
    assert set(table) - {"default"} == set(envs.CATCH_IDS)
    assert ("default" in table) == (algo == "fast_recurrent_ppo")  # ppo_lstm: the zoo's own file has one
    for env_id in envs.CATCH_IDS:
        model, saved = _experiment(tmp_path, algo, env_id).setup_experiment()
        assert type(model) is zoo.ALGOS[algo] and saved["n_timesteps"] >= 3e5
        assert (model.n_envs, model.n_steps, model.batch_size, model.n_epochs) == (16, 64, 256, 4)
        assert (model.gamma, model.gae_lambda, model.ent_coef, model.lr_schedule(1)) == (0.99, 0.95, 0.01, 1e-3)
        assert type(model.policy) is RecurrentMemoryPolicy and model.policy.memory == "fastweights"
        assert _core(model).hidden_size == 128 and model.policy.critic_mode == "shared"
        assert _fast_options(model) == dict(fast_lr=None, fast_share=0.5, decay=0.95, inner_steps=1)  # the agent defaults
        # the zoo's default (dummy) envs of a Catch id: one batched CatchSB3VecEnv
        assert isinstance(model.env, VecMonitor) and isinstance(model.env.venv, CatchSB3VecEnv)
        assert model.observation_space == gym.spec(env_id).make().observation_space
        model.env.close()


@pytest.mark.parametrize("memory", MEMORY_NAMES)
def test_every_memory_by_the_zoos_override(tmp_path, memory):
    policy_kwargs = dict(memory=memory, hidden_size=8)
    model, _ = _experiment(tmp_path, zoo.ALGO, "Catch-v0", dict(policy_kwargs=policy_kwargs)).setup_experiment()
    assert model.policy.memory == memory and model.policy.lstm_output_dim == 8
    model.env.close()


def test_catch_vec_env_is_the_dummy_vec_env_batched():
    make = lambda: make_vec_env("CatchFlicker16-v0", 3, seed=5, vec_env_cls=zoo.catch_vec_env)  # noqa: E731
    batched, dummy = make(), make_vec_env("CatchFlicker16-v0", 3, seed=5, vec_env_cls=DummyVecEnv)
    assert isinstance(batched.venv, CatchSB3VecEnv) and batched.num_envs == 3
    assert np.array_equal(batched.reset(), dummy.reset())
    for actions in np.random.default_rng(0).integers(0, 3, size=(40, 3)):
        (obs, rew, done, _), (obs2, rew2, done2, _) = batched.step(actions), dummy.step(actions)
        assert np.array_equal(obs, obs2) and np.array_equal(rew, rew2) and np.array_equal(done, done2)
    # anything but a plain Catch game (here a zoo env_wrapper): the stock DummyVecEnv
    wrapped = make_vec_env("Catch-v0", 2, wrapper_class=gym.wrappers.FlattenObservation, vec_env_cls=zoo.catch_vec_env)
    assert type(wrapped) is DummyVecEnv


YAML_POLICY = dict(memory="fastweights", hidden_size=128, critic="shared",
                   memory_kwargs=dict(fast_share=0.5, decay=0.95, inner_steps=1))  # fmt: skip
PPO_PARAMS = dict(batch_size_pow=5, n_steps_pow=5, one_minus_gamma=0.01, one_minus_gae_lambda=0.05, learning_rate=3e-4,
                  ent_coef=1e-3, clip_range=0.2, n_epochs=1, max_grad_norm=0.5, net_arch="tiny", activation_fn="relu")  # fmt: skip


def test_sampler_merges_eta_lambda_s_into_the_policy_kwargs():
    trial = optuna.trial.FixedTrial({**PPO_PARAMS, "fast_share": 2.0, "decay": 0.7, "inner_steps": 2})
    hyperparams = dict(policy="RecurrentMemoryPolicy", policy_kwargs=YAML_POLICY)
    sampled = zoo.sample_fast_recurrent_ppo_params(trial, 0, 16, {}, hyperparams)
    assert (sampled["n_steps"], sampled["batch_size"], sampled["gamma"]) == (32, 32, 0.99)
    policy_kwargs = sampled["policy_kwargs"]
    assert {k: policy_kwargs[k] for k in ("memory", "hidden_size", "critic")} == dict(memory="fastweights",
                                                                                   hidden_size=128, critic="shared")  # fmt: skip
    # complete: the sampled options over the YAML's, the agent defaults for the rest
    assert policy_kwargs["memory_kwargs"] == {**DEFAULT_MEMORY_KWARGS["fastweights"], "fast_share": 2.0, "decay": 0.7,
                                              "inner_steps": 2}  # fmt: skip
    assert policy_kwargs["net_arch"] == dict(pi=[64], vf=[64])  # the zoo's own search, merged too
    assert YAML_POLICY["memory_kwargs"]["fast_share"] == 0.5  # the experiment's dict untouched
    # the converter (the zoo's --trial-id) reads the same parameters back
    converted = zoo.convert_fast_recurrent_ppo_params(trial.params)
    assert converted["policy_kwargs"]["memory_kwargs"] == dict(fast_share=2.0, decay=0.7, inner_steps=2)
    assert {k: converted[k] for k in ("n_steps", "learning_rate")} == dict(n_steps=32, learning_rate=3e-4)


def test_sampler_searches_fast_weights_only_for_a_fast_weights_core():
    # FixedTrial raises on a parameter it was not given: an LSTM trial suggests no η, λ, S
    lstm = zoo.sample_fast_recurrent_ppo_params(
        optuna.trial.FixedTrial(PPO_PARAMS), 0, 16, {}, dict(policy=RecurrentMemoryPolicy, policy_kwargs=dict(memory="lstm"))
    )
    assert lstm["policy_kwargs"]["memory"] == "lstm" and "memory_kwargs" not in lstm["policy_kwargs"]
    mlp = zoo.sample_fast_recurrent_ppo_params(optuna.trial.FixedTrial(PPO_PARAMS), 0, 16, {}, dict(policy="MlpLstmPolicy"))
    assert "memory_kwargs" not in mlp["policy_kwargs"]
    # the paper's absolute η (a YAML that sets fast_lr) is searched on figure5.py's range
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        paper = dict(YAML_POLICY, memory_kwargs=dict(fast_lr=0.5))
        kwargs = zoo.sample_fast_recurrent_ppo_params(study.ask(), 0, 16, {}, dict(policy="FastWeightsPolicy",
                                                                                 policy_kwargs=paper))  # fmt: skip
        memory_kwargs = kwargs["policy_kwargs"]["memory_kwargs"]
        assert "fast_share" not in memory_kwargs and 1e-4 <= memory_kwargs["fast_lr"] <= 0.1
        assert 0.5 <= memory_kwargs["decay"] <= 0.99 and memory_kwargs["inner_steps"] in (1, 2)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # PartialFixedSampler
@pytest.mark.parametrize("algo", ALGOS)
def test_optimize_through_the_zoo_reaches_the_core(tmp_path, monkeypatch, one_thread, algo):
    """One ``-optimize`` trial: the η, λ, S it sampled are the trained model's, the YAML's memory
    and width are kept; ``--trial-id`` reads them back merged into the YAML's policy_kwargs.
    ``ppo_lstm`` (sb3-contrib's RecurrentPPO) gets the same sampler for this project's policies."""
    fixed = {k: PPO_PARAMS[k] for k in ("batch_size_pow", "n_steps_pow", "n_epochs", "net_arch")}  # tiny sizes
    monkeypatch.setattr(zoo.ExperimentManager, "_create_sampler",
                        lambda self, method: optuna.samplers.PartialFixedSampler(fixed, optuna.samplers.RandomSampler(0)))  # fmt: skip
    try:
        import pandas  # noqa: F401  (the zoo writes its report with it; the zoo extra installs it)
    except ImportError:
        monkeypatch.setattr(optuna.Study, "trials_dataframe", lambda self: argparse.Namespace(to_csv=lambda path: None))
    storage = str(tmp_path / "study.log")
    _train(tmp_path, "-optimize", "--n-trials", "1", "--n-evaluations", "1", "--eval-episodes", "2", "--no-optim-plots",
           "--optimization-log-path", str(tmp_path / "trials"), "--storage", storage, "--study-name", "s",
           "--hyperparams", "n_envs:2", f"policy_kwargs:{TINY_POLICY.format('')}", algo=algo)  # fmt: skip
    (report,) = (tmp_path / "logs" / algo).glob("report_*.pkl")
    params = pickle.loads(report.read_bytes()).trials[0].params
    assert {"fast_share", "decay", "inner_steps"} <= set(params) and "fast_lr" not in params
    model = FastRecurrentPPO.load(tmp_path / "trials" / "trial_0" / "best_model.zip", device="cpu")
    assert _fast_options(model) == dict(fast_lr=None, fast_share=params["fast_share"], decay=params["decay"],
                                        inner_steps=params["inner_steps"])  # fmt: skip
    assert model.policy.memory == "fastweights" and _core(model).hidden_size == 16  # the YAML's / override's
    assert model.lr_schedule(1) == params["learning_rate"] and model.n_steps == 32

    # --trial-id: the trial's parameters over the YAML entry's policy_kwargs (memory, width kept)
    experiment = _experiment(tmp_path, algo, "CatchBlind16-v0")
    loaded = experiment.load_trial(storage, "s", 0)
    assert loaded["policy_kwargs"]["memory_kwargs"] == dict(fast_share=params["fast_share"], decay=params["decay"],
                                                            inner_steps=params["inner_steps"])  # fmt: skip
    assert loaded["policy_kwargs"]["memory"] == "fastweights" and loaded["policy_kwargs"]["hidden_size"] == 128


@pytest.mark.parametrize("trial_id", [0, 1])
def test_trial_id_loads_that_trial_including_trial_0(tmp_path, trial_id):
    """``--trial-id N`` trains trial N's hyper-parameters over the YAML entry's; trial 0 too (the zoo
    reads ``if self.trial_id:``, which took 0 for "no trial" and silently kept the YAML's)."""
    storage = str(tmp_path / "study.log")
    study = optuna.create_study(storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
                                study_name="s")  # fmt: skip
    trials = [{**PPO_PARAMS, "learning_rate": lr, "fast_lr": fast_lr} for lr, fast_lr in ((1e-4, 2.0), (5e-4, 0.3))]
    choices = {key: sorted({trial[key] for trial in trials}, key=str) for key in trials[0]}
    for params in trials:
        distributions = {key: optuna.distributions.CategoricalDistribution(choices[key]) for key in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=1.0))
    zoo.register()
    experiment = zoo.ExperimentManager(argparse.Namespace(), zoo.ALGO, "CatchBlind16-v0", str(tmp_path), n_timesteps=256,
                                       eval_freq=-1, config=str(zoo.HYPERPARAMS_DIR / f"{zoo.ALGO}.yml"),
                                       storage=storage, study_name="s", trial_id=trial_id)  # fmt: skip
    hyperparams, _ = experiment.read_hyperparameters()
    assert hyperparams["learning_rate"] == trials[trial_id]["learning_rate"]  # the YAML's is 1e-3
    assert hyperparams["policy_kwargs"]["memory_kwargs"]["fast_lr"] == trials[trial_id]["fast_lr"]
    assert hyperparams["policy_kwargs"]["hidden_size"] == 128  # the YAML entry's, kept


class _RunsAShellCommand:
    """What a crafted pickle holds: unpickling it calls ``os.system``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def _run_folder(tmp_path: Path, config: str, args: str | None = None, vecnormalize: bytes | None = None) -> Path:
    """A zoo run folder for ``ppo_lstm`` on CatchBlind16-v0 with these files (a placeholder model:
    a zip with an empty ``data`` entry, which enjoy reads before the YAML)."""
    import zipfile

    run = tmp_path / "logs" / "ppo_lstm" / "CatchBlind16-v0_1"
    (run / "CatchBlind16-v0").mkdir(parents=True)
    with zipfile.ZipFile(run / "CatchBlind16-v0.zip", "w") as placeholder:
        placeholder.writestr("data", "{}")
    (run / "CatchBlind16-v0" / "config.yml").write_text(config)
    if args is not None:
        (run / "CatchBlind16-v0" / "args.yml").write_text(args)
    if vecnormalize is not None:
        (run / "CatchBlind16-v0" / "vecnormalize.pkl").write_bytes(vecnormalize)
    return run


def _enjoy_refuses(tmp_path: Path, capsys, needle: str, *extra: str) -> None:
    with pytest.raises(SystemExit) as stop:
        zoo.main(["enjoy", "--algo", "ppo_lstm", "--env", "CatchBlind16-v0", "-f", str(tmp_path / "logs"),
                  "--no-render", "-n", "4", "--verbose", "0", *extra])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the zoo's own output above it
    assert stop.value.code == 2 and error.startswith("error: ") and needle in error and "\n" not in error and "--trust-checkpoint" in error


def test_enjoy_runs_no_code_from_the_run_folders_yaml(tmp_path, capsys, one_thread):
    marker = tmp_path / "ran"
    system = f'!!python/object/apply:os.system ["touch {marker}"]\n'
    plain = "normalize: false\n"
    cases = [
        (dict(config=f"normalize: {system}"), "holds a Python tag"),
        (dict(config=plain, args=f"env_kwargs: {system}"), "args.yml: holds a Python tag"),
        (dict(config=f"normalize: \"__import__('os').system('touch {marker}')\"\n"), "gives normalize as code"),
        (dict(config=f"env_wrapper: marks_on_import.Wrapper\n{plain}"), "names classes to import"),
    ]
    for files, needle in cases:
        _run_folder(tmp_path / needle.replace(" ", "_"), **files)
        _enjoy_refuses(tmp_path / needle.replace(" ", "_"), capsys, needle)
        assert not marker.exists(), needle


def test_enjoy_runs_no_code_from_a_pickle(tmp_path, capsys, one_thread):
    marker = tmp_path / "ran"
    crafted = pickle.dumps(_RunsAShellCommand(f"touch {marker}"))
    _run_folder(tmp_path, "normalize: true\n", vecnormalize=crafted)
    _enjoy_refuses(tmp_path, capsys, "vecnormalize.pkl needs")
    assert not marker.exists()
    with pytest.raises(Exception):  # trusted: the zoo unpickles it (so the command runs), then fails on it
        zoo.main(["enjoy", "--algo", "ppo_lstm", "--env", "CatchBlind16-v0", "-f", str(tmp_path / "logs"),
                  "--no-render", "-n", "4", "--verbose", "0", "--trust-checkpoint"])  # fmt: skip
    assert marker.exists(), "--trust-checkpoint replays the folder as the zoo would"

    # the model zip: a value that runs a command is refused by the allowlist
    import base64
    import json
    import zipfile

    from sb3_contrib import RecurrentPPO

    marker.unlink()
    run = _run_folder(tmp_path / "model", "normalize: false\n")
    env = make_vec_env("CatchBlind16-v0", n_envs=1)
    RecurrentPPO("MlpLstmPolicy", env, n_steps=8, batch_size=8, policy_kwargs=dict(lstm_hidden_size=4)).save(tmp_path / "m.zip")
    data = json.loads(zipfile.ZipFile(tmp_path / "m.zip").read("data"))
    data["ep_info_buffer"] = {":type:": "x", ":serialized:": base64.b64encode(crafted).decode()}
    with zipfile.ZipFile(tmp_path / "m.zip") as src, zipfile.ZipFile(run / "CatchBlind16-v0.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, json.dumps(data) if name == "data" else src.read(name))
    _enjoy_refuses(tmp_path / "model", capsys, "'ep_info_buffer' needs")
    assert not marker.exists()


# ------------------------------------------------------------------------ bad input: one line
_TRAIN = ["train", "--algo", zoo.ALGO, "--env", "Catch-v0", "-n", "64", "--num-threads", "1"]
_ACCEPTED_ALGOS = "(choose from 'a2c', 'ddpg', 'dqn', 'ppo', 'sac', 'td3', 'ars', 'crossq', 'qrdqn', 'tqc', 'trpo', 'ppo_lstm', 'fast_recurrent_ppo')"
TRAIN_BAD_INPUT = [
    (["train", "--algo", "bogus", "--env", "Catch-v0"], f"argument --algo: invalid choice: 'bogus' {_ACCEPTED_ALGOS}"),
    ([*_TRAIN, "--env", "NoSuchEnv-v0"], "unknown env id 'NoSuchEnv-v0'; use a registered Gymnasium id"),
    ([*_TRAIN, "--env", "Blackjack-v1"], "env 'Blackjack-v1' observes Tuple(Discrete(32), Discrete(11), Discrete(2)), "
     "which SB3's recurrent PPO cannot take; accepted: Box, Discrete, MultiDiscrete, MultiBinary"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:dict(memory='transformer')"],
     "policy_kwargs memory='transformer' is unknown; accepted: fastweights, lstm, gru, irnn, alstm, none"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:str"], "policy_kwargs must be a dict"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:dict(bogus=1)"], "unknown policy_kwargs key 'bogus' for RecurrentMemoryPolicy; accepted: memory,"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:dict(hidden_size=-3)"], "policy_kwargs hidden_size must be an integer >= 1, got -3"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:dict(memory_kwargs=[])"], "policy_kwargs: memory_kwargs must be a dict, got []"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:dict(memory='fastweights', memory_kwargs=dict(decay=5))"],
     "policy_kwargs: decay (λ) must be a finite number in (0, 1), got 5"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:dict(memory='lstm', memory_kwargs=dict(decay=0.9))"],
     "policy_kwargs: unknown memory_kwargs key 'decay' for memory lstm; accepted: none"),
    ([*_TRAIN, "--hyperparams", "policy_kwargs:dict(hidden_size=100000)"],
     "this run needs about 449.0 GiB (n_envs 16 x n_steps 64 steps of 200264 floats, policy_kwargs hidden_size 100000)"),
]


@pytest.mark.parametrize("argv, message", TRAIN_BAD_INPUT, ids=[" ".join(argv[len(_TRAIN):] or argv[1:3]) for argv, _ in TRAIN_BAD_INPUT])
def test_train_bad_input_is_one_line_exit_2_and_no_folder(argv, message, tmp_path, capsys, monkeypatch):
    """rl_zoo3 raised these from gymnasium, SB3 or the policy (a traceback) after making the run
    folder, or printed its 32-line usage (--algo)."""
    from fw_agents.runs import preflight

    monkeypatch.setattr(preflight, "_physical_memory", lambda: 64 * 2**30)  # the same on every machine
    with pytest.raises(SystemExit) as stop:
        zoo.main([*argv, "-f", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "logs").exists()


def test_train_bad_policy_kwargs_in_a_yaml_is_one_line(tmp_path, capsys):
    conf = yaml.safe_load((zoo.HYPERPARAMS_DIR / "fast_recurrent_ppo.yml").read_text())["Catch-v0"]
    conf["policy_kwargs"] = "dict(memory='fastweights', memory_kwargs=dict(inner_steps=0))"
    (tmp_path / "mine.yml").write_text(yaml.safe_dump({"Catch-v0": conf}))
    with pytest.raises(SystemExit) as stop:
        zoo.main([*_TRAIN, "-conf", str(tmp_path / "mine.yml"), "-f", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: policy_kwargs: inner_steps") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "logs").exists()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> bytes:
    """The bytes of a small untrained FastRecurrentPPO model on Catch-v0."""
    path = tmp_path_factory.mktemp("model") / "Catch-v0.zip"
    policy_kwargs = dict(memory="fastweights", hidden_size=8, features_extractor_kwargs=dict(features_dim=8))
    FastRecurrentPPO("RecurrentMemoryPolicy", "Catch-v0", n_steps=8, batch_size=8, policy_kwargs=policy_kwargs).save(path)
    return path.read_bytes()


def _damage_the_largest_member(model: bytes) -> bytes:
    """``model`` with 16 bytes zeroed in the middle of its largest member but ``data`` (the weights)."""
    import io
    import zipfile

    members = [member for member in zipfile.ZipFile(io.BytesIO(model)).infolist() if member.filename != "data"]
    info = max(members, key=lambda member: member.compress_size)
    at = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    return model[:at] + bytes(16) + model[at + 16 :]


def _enjoy_folder(tmp_path: Path, model: bytes | None, env_id: str = "Catch-v0") -> Path:
    """``<tmp>/logs`` with one fast_recurrent_ppo run on ``env_id`` holding ``model`` (none if ``None``)."""
    run = tmp_path / "logs" / zoo.ALGO / f"{env_id}_1"
    (run / env_id).mkdir(parents=True)
    (run / env_id / "config.yml").write_text("normalize: false\n")
    if model is not None:
        (run / f"{env_id}.zip").write_bytes(model)
    return tmp_path / "logs"


@pytest.mark.parametrize("trust", [False, True], ids=["untrusted", "trusted"])
def test_enjoy_bad_folders_and_models_are_one_line_exit_2(tmp_path, capsys, saved_model, trust):
    """rl_zoo3's enjoy raised an AssertionError, or a ValueError from SB3 or the allowlist, as a traceback."""
    cases = {
        "missing folder": (tmp_path / "nonexistent", "-f {folder}: no such folder"),
        "random bytes": (_enjoy_folder(tmp_path / "random", np.random.default_rng(0).bytes(4096)),
                         "cannot read model '{folder}/fast_recurrent_ppo/Catch-v0_1/Catch-v0.zip': File is not a zip file"),
        # cut in the middle of torch's own zip of the weights: what zipfile finds is that one
        "truncated zip": (_enjoy_folder(tmp_path / "truncated", saved_model[: len(saved_model) // 2]),
                          "{folder}/fast_recurrent_ppo/Catch-v0_1/Catch-v0.zip is not a Stable-Baselines3 model"),
        "damaged member": (_enjoy_folder(tmp_path / "damaged", _damage_the_largest_member(saved_model)),
                           "cannot read model '{folder}/fast_recurrent_ppo/Catch-v0_1/Catch-v0.zip': its member "),
        "no model in the run": (_enjoy_folder(tmp_path / "empty", None), "no model found for fast_recurrent_ppo on Catch-v0"),
        "no run for the env": (_enjoy_folder(tmp_path / "other", saved_model, "CatchBlind16-v0"),
                               "no fast_recurrent_ppo run on Catch-v0 in {folder}/fast_recurrent_ppo (it holds: CatchBlind16-v0_1)"),
    }
    for case, (folder, needle) in cases.items():
        argv = ["enjoy", "--algo", zoo.ALGO, "--env", "Catch-v0", "-f", str(folder), "--no-render", "-n", "4"]
        with pytest.raises(SystemExit) as stop:
            zoo.main([*argv, *(["--trust-checkpoint"] if trust else [])])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, (case, err)
        assert needle.format(folder=folder) in err and "Traceback" not in err, (case, err)
    # the same folder with the whole model replays
    (tmp_path / "random/logs/fast_recurrent_ppo/Catch-v0_1/Catch-v0.zip").write_bytes(saved_model)
    zoo.main(["enjoy", "--algo", zoo.ALGO, "--env", "Catch-v0", "-f", str(tmp_path / "random/logs"), "--no-render", "-n", "4"])
