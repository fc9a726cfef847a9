"""Model files load without running code from them (fw_agents.runs.safe_load)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

import envs  # noqa: F401  (registers the ids)
from fw_agents.runs.safe_load import UnsafeModelError, load_model, safe_custom_objects


class _RunsAShellCommand:
    """What a crafted file pickles: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("models")
    env = make_vec_env("CatchBlind16-v0", n_envs=2, seed=0)
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0,
                         policy_kwargs=dict(lstm_hidden_size=8))  # fmt: skip
    model.learn(64)
    model.save(folder / "model.zip")
    return folder, env, model


def _with_data(source: Path, target: Path, **replaced: object) -> Path:
    data = json.loads(zipfile.ZipFile(source).read("data"))
    data.update(replaced)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, json.dumps(data) if name == "data" else src.read(name))
    return target


def test_a_plain_model_loads_the_same_without_unpickling(saved):
    folder, env, model = saved
    objects = safe_custom_objects(folder / "model.zip")
    serialized = {k for k, v in json.loads(zipfile.ZipFile(folder / "model.zip").read("data")).items()
                  if isinstance(v, dict) and ":serialized:" in v}  # fmt: skip
    assert serialized and serialized <= objects.keys(), "SB3 is left nothing to unpickle"
    loaded = load_model(RecurrentPPO, folder / "model.zip", env=env, device="cpu")
    assert loaded.observation_space == model.observation_space and loaded.num_timesteps == 64
    obs = env.reset()
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    loaded.learn(32, reset_num_timesteps=False)  # training continues from the decoded schedules
    assert loaded.num_timesteps == 96


def test_a_crafted_file_is_refused_before_its_code_runs(saved, tmp_path):
    folder, env, _ = saved
    marker = tmp_path / "ran"
    evil = {":type:": "<class 'collections.deque'>", ":serialized:": base64.b64encode(pickle.dumps(_RunsAShellCommand(marker))).decode()}  # fmt: skip
    crafted = _with_data(folder / "model.zip", tmp_path / "crafted.zip", ep_success_buffer=evil)
    with pytest.raises(UnsafeModelError, match=r"'ep_success_buffer' needs (posix|os)\.system.*trusted=True"):
        load_model(RecurrentPPO, crafted, env=env)
    assert not marker.exists(), "the file's code must not have run"


def test_code_in_a_schedule_needs_trust(saved, tmp_path):
    _, env, _ = saved
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=16, batch_size=16, learning_rate=lambda done: 1e-3 * done,
                         policy_kwargs=dict(lstm_hidden_size=8))  # fmt: skip
    model.save(tmp_path / "lambda.zip")
    with pytest.raises(UnsafeModelError, match="cloudpickle"):
        load_model(RecurrentPPO, tmp_path / "lambda.zip", env=env)
    assert load_model(RecurrentPPO, tmp_path / "lambda.zip", env=env, trusted=True).learning_rate(0.5) == 5e-4


def test_unreadable_files_are_one_line_value_errors(saved, tmp_path):
    folder, _, _ = saved
    whole = (folder / "model.zip").read_bytes()
    (tmp_path / "half.zip").write_bytes(whole[: len(whole) // 2])
    with zipfile.ZipFile(tmp_path / "no_data.zip", "w") as archive:
        archive.writestr("policy.pth", b"")
    corrupt = {":type:": "x", ":serialized:": base64.b64encode(b"\x80\x05garbage").decode()}
    cases = {
        tmp_path / "missing.zip": "cannot read model",
        tmp_path / "half.zip": "half.zip",  # not a zip, or (the .pth entries are zips) one without 'data'
        tmp_path / "no_data.zip": "has no 'data' entry",
        _with_data(folder / "model.zip", tmp_path / "corrupt.zip", ep_info_buffer=corrupt): "'ep_info_buffer' is corrupt",
    }
    for path, needle in cases.items():
        with pytest.raises(ValueError) as error:
            safe_custom_objects(path)
        assert needle in str(error.value) and "\n" not in str(error.value)


def test_classes_named_in_policy_kwargs_load_without_trust(saved, tmp_path):
    import torch

    _, env, _ = saved
    kwargs = dict(lstm_hidden_size=8, activation_fn=torch.nn.Tanh, optimizer_class=torch.optim.RMSprop)
    RecurrentPPO("MlpLstmPolicy", env, n_steps=16, batch_size=16, policy_kwargs=kwargs).save(tmp_path / "m.zip")
    loaded = load_model(RecurrentPPO, tmp_path / "m.zip", env=env)
    assert loaded.policy_kwargs["activation_fn"] is torch.nn.Tanh
    assert isinstance(loaded.policy.optimizer, torch.optim.RMSprop)


def test_schedules_the_caller_replaces_are_not_decoded(saved, tmp_path):
    """SB3's documented way to load a file whose schedule is code: replace it in ``custom_objects``
    (what rl_zoo3's ``enjoy`` always does). The replaced keys are not decoded, so no trust is needed."""
    from fw_agents.algorithms import FastRecurrentPPO

    _, env, _ = saved
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=16, batch_size=16, learning_rate=lambda done: 1e-3 * done,
                         policy_kwargs=dict(lstm_hidden_size=8))  # fmt: skip
    model.save(tmp_path / "lambda.zip")
    replaced = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0}
    assert load_model(RecurrentPPO, tmp_path / "lambda.zip", env=env, custom_objects=replaced).learning_rate == 0.0
    assert FastRecurrentPPO.load(tmp_path / "lambda.zip", env=env, custom_objects=replaced).learning_rate == 0.0
    assert "learning_rate" not in safe_custom_objects(tmp_path / "lambda.zip", replaced=replaced)
    with pytest.raises(UnsafeModelError, match="cloudpickle"):  # replacing another key does not help
        FastRecurrentPPO.load(tmp_path / "lambda.zip", env=env, custom_objects={"clip_range": 0.2})


def test_a_module_the_file_names_is_not_imported(saved, tmp_path, monkeypatch):
    """Importing a module runs its code (``fw_agents.__main__`` starts a training run): a module
    outside the allowlist is refused by name, before any import."""
    import fw_agents

    marker = tmp_path / "imported"
    (tmp_path / "marks_on_import.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Policy: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fw_agents, "__path__", [*fw_agents.__path__, str(tmp_path)])
    folder, env, _ = saved
    for module in ("fw_agents.marks_on_import", "marks_on_import", "fw_agents.__main__"):
        evil = {":type:": "<class 'type'>", ":serialized:": base64.b64encode(f"c{module}\nPolicy\n.".encode()).decode()}
        crafted = _with_data(folder / "model.zip", tmp_path / "crafted.zip", observation_space=evil)
        with pytest.raises(UnsafeModelError, match=f"'observation_space' needs {module}.Policy"):
            load_model(RecurrentPPO, crafted, env=env)
        assert not marker.exists(), f"{module} was imported"


def _with_raw_data(source: Path, target: Path, text: str) -> Path:
    """``source`` with its ``data`` entry replaced by ``text`` as it is (JSON that Python would not write)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, text if name == "data" else src.read(name))
    return target


def test_saved_fields_out_of_type_or_range_are_one_line_value_errors(saved, tmp_path):
    """SB3 checks no field of a model's ``data``: ``num_timesteps: 1e400`` was an OverflowError far from
    the file, ``-100`` a run counting from -100. Each is refused at load, naming the field and its value,
    JSON or decoded from its pickle, trusted or not."""
    from fw_agents.algorithms import FastRecurrentPPO

    folder, env, _ = saved
    text = zipfile.ZipFile(folder / "model.zip").read("data").decode()
    data = json.loads(text)
    as_pickle = {":type:": "<class 'str'>", ":serialized:": base64.b64encode(pickle.dumps("str")).decode()}
    cases = {
        "num_timesteps must be an integer in [0, 9223372036854775807], got inf":
            text.replace('"num_timesteps": 64', '"num_timesteps": 1e400'),
        "num_timesteps must be an integer in [0, 9223372036854775807], got [1]": dict(num_timesteps=[1]),
        "num_timesteps must be an integer in [0, 9223372036854775807], got -100": dict(num_timesteps=-100),
        "policy_kwargs must be a dict (a JSON object), got 'str'": dict(policy_kwargs="str"),
        "policy_kwargs.memory_kwargs must be a dict (a JSON object), got []":
            dict(policy_kwargs={**data["policy_kwargs"], "memory_kwargs": []}),
        "n_steps must be an integer in [1, 9223372036854775807], got 0": dict(n_steps=0),
        "gamma must be a finite number in [0, 1], got 2": dict(gamma=2),
        "learning_rate must be a finite number >= 0, got nan": dict(learning_rate=float("nan")),
        "policy_kwargs must be a dict (a JSON object), got 'str'@pickled": dict(policy_kwargs=as_pickle),
    }  # fmt: skip
    assert '"num_timesteps": 64' in text
    for k, (message, change) in enumerate(cases.items()):
        message, _, how = message.partition("@")
        target = tmp_path / f"bad{k}.zip"
        if isinstance(change, str):
            _with_raw_data(folder / "model.zip", target, change)
        else:
            _with_data(folder / "model.zip", target, **change)
        loads = [lambda: load_model(RecurrentPPO, target, env=env), lambda: FastRecurrentPPO.load(target, env=env)]
        if how != "pickled":  # a pickled value is SB3's to unpickle when the file is trusted
            loads.append(lambda: FastRecurrentPPO.load(target, env=env, trusted=True))
        for load in loads:
            with pytest.raises(ValueError) as error:
                load()
            assert str(error.value) == f"{target}: saved {message}"


def test_only_regular_files_of_bounded_size_are_read(saved, tmp_path, monkeypatch):
    """A FIFO (whose open waited forever), a device (``/dev/zero`` grew the process to 24 GB), a folder,
    a file or a zip entry beyond the bounds: one line each, nothing read."""
    import signal

    import fw_agents.runs.safe_load as safe_load
    from fw_agents.algorithms import FastRecurrentPPO

    folder, env, _ = saved
    os.mkfifo(tmp_path / "fifo.zip")
    cases = {
        tmp_path / "fifo.zip": "is a FIFO, not a regular file",
        Path("/dev/zero"): "is a character device, not a regular file",
        tmp_path: "is a folder, not a regular file",
    }
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the load blocked"))
    signal.alarm(20)
    try:
        for path, needle in cases.items():
            for load in (lambda: safe_custom_objects(path), lambda: FastRecurrentPPO.load(path, env=env, trusted=True)):
                with pytest.raises(ValueError) as error:
                    load()
                assert str(error.value) == f"model {str(path)!r} {needle}; give a file"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    size = (folder / "model.zip").stat().st_size
    monkeypatch.setattr(safe_load, "MAX_MODEL_BYTES", size - 1)
    with pytest.raises(ValueError, match=r"model '.*model.zip' is .*, larger than the .* accepted$"):
        safe_custom_objects(folder / "model.zip")
    bomb = tmp_path / "bomb.zip"  # a small file whose entries unpack to much more
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", bytes(2**20))
    assert bomb.stat().st_size < size
    with pytest.raises(ValueError, match=r"its entries unpack to 1 MiB, more than the .* accepted$"):
        safe_custom_objects(bomb)
    monkeypatch.setattr(safe_load, "MAX_MODEL_BYTES", 4 * 2**30)
    monkeypatch.setattr(safe_load, "MAX_MODEL_DATA_BYTES", 100)
    with pytest.raises(ValueError, match=r"its 'data' entry unpack to .*, more than the 100 bytes accepted$"):
        safe_custom_objects(folder / "model.zip")


def test_saved_fields_that_sb3_itself_writes_pass():
    """What SB3 writes in earnest is accepted: a progress below 0 (the last rollout overshot the
    total), SAC's ``ent_coef: "auto_0.1"``, ``None`` where SB3 keeps it, decoded schedules; a key
    the caller's ``custom_objects`` replace is not checked (SB3 does not use the file's)."""
    from fw_agents.runs.safe_load import check_model_data

    check_model_data({"_current_progress_remaining": -0.25, "ent_coef": "auto_0.1", "seed": None, "batch_size": None,
                      "target_kl": None, "clip_range_vf": None, "learning_rate": lambda progress: 1e-3 * progress,
                      "policy_kwargs": {"net_arch": [64], "memory": "lstm", "hidden_size": 8}, "sde_sample_freq": -1})  # fmt: skip
    check_model_data({"learning_rate": "nonsense", "policy_kwargs": "str"}, skip=("learning_rate", "policy_kwargs"))
    with pytest.raises(ValueError, match=r"^m.zip: saved learning_rate must be a finite number >= 0, got 'nonsense'$"):
        check_model_data({"learning_rate": "nonsense"}, "m.zip")
