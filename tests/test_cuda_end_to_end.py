"""The CUDA path end to end (issue 15): each test also runs on CPU, so its logic is checked on
every machine; the CUDA cases run where a GPU is (``benchmarks/gpu_check.py`` runs ``-m cuda``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import envs
from fw_agents.config import TrainConfig
from fw_agents.train import train
from fw_agents.algorithms import FastRecurrentPPO
from fw_agents.policies import FastWeightsPolicy

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.py)")]),
]  # fmt: skip
SMALL = dict(n_steps=16, batch_size=32, n_epochs=1, policy_kwargs=dict(hidden_size=16))


@pytest.mark.parametrize("device", DEVICES)
def test_save_on_one_device_load_on_the_other(device, tmp_path, one_thread):
    """Trained (fused Adam, inference-mode rollouts) on ``device``, saved, loaded on CPU and back."""
    env = envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 4)
    model = FastRecurrentPPO(FastWeightsPolicy, env, device=device, seed=0, **SMALL)
    assert model.policy.optimizer.defaults.get("fused") is True
    model.learn(128)
    assert next(model.policy.parameters()).device.type == device
    model.save(tmp_path / "m.zip")
    obs = env.reset()
    expected, _ = model.predict(obs, deterministic=True)
    on_cpu = FastRecurrentPPO.load(tmp_path / "m.zip", env=env, device="cpu")
    assert next(on_cpu.policy.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(on_cpu.predict(obs, deterministic=True)[0], expected)
    on_cpu.save(tmp_path / "cpu.zip")
    back = FastRecurrentPPO.load(tmp_path / "cpu.zip", env=env, device=device)
    np.testing.assert_array_equal(back.predict(obs, deterministic=True)[0], expected)
    back.learn(64, reset_num_timesteps=False)  # training goes on after the move


@pytest.mark.parametrize("device", DEVICES)
def test_train_agent_runs_on_the_device(device, tmp_path, one_thread):
    config = TrainConfig(env="CatchBlind16-v0", device=device, run_dir=str(tmp_path / "r"), timesteps=256, n_envs=4,
                         n_steps=32, batch_size=64, n_epochs=1, hidden_size=16, eval_freq=128, eval_episodes=4,
                         gif_episodes=0, wandb="disabled", progress_bar=False)  # fmt: skip
    summary = train(config)
    assert summary["timesteps"] == 256 and json.loads((tmp_path / "r" / "config.json").read_text())["device"] == device


@pytest.mark.parametrize("device", DEVICES)
def test_supervised_head_trains_on_the_device(device, tmp_path, one_thread):
    from fw_agents.tasks import retrieval

    argv = ["--memory", "fastweights", "--hidden", "8", "--steps", "4", "--eval-every", "2", "--device", device,
            "--wandb", "disabled", "--run-dir", str(tmp_path / "r")]  # fmt: skip
    assert retrieval.main(argv) == 0
    assert json.loads((tmp_path / "r" / "results.json").read_text())["updates"] == 4


@pytest.mark.parametrize("device", DEVICES)
def test_a_rollout_step_reads_nothing_back_from_the_device(device, monkeypatch, one_thread, device_syncs):
    """The policy's step through the fused kernel (interpreted on CPU) never syncs with the
    device: on a GPU a sync in the middle of a step stalls its launches behind the device."""
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    kwargs = {**SMALL, "policy_kwargs": dict(hidden_size=16, memory_kwargs=dict(mode="triton"))}
    model = FastRecurrentPPO(FastWeightsPolicy, envs.CatchSB3VecEnv.from_id("CatchBlind16-v0", 4), device=device, **kwargs)
    obs = torch.as_tensor(model.get_env().reset(), device=model.device)
    states = model._last_lstm_states
    for starts in (torch.ones(4, device=model.device), torch.tensor([0.0, 1.0, 0.0, 0.0], device=model.device)):
        previous = torch.cuda.get_sync_debug_mode() if device == "cuda" else None
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.inference_mode():
                assert device_syncs(lambda: model.policy.forward(obs, states, starts)) == []
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.py)")
def test_a_supervised_run_stopped_on_the_gpu_resumes_on_the_cpu(tmp_path, one_thread):
    """``--device`` may change on ``--resume``: the training state is read onto the CPU first."""
    from fw_agents.tasks import retrieval

    run = tmp_path / "r"
    argv = ["--memory", "fastweights", "--hidden", "8", "--eval-every", "2", "--wandb", "disabled"]
    assert retrieval.main([*argv, "--steps", "2", "--device", "cuda", "--run-dir", str(run)]) == 0
    assert retrieval.main(["--steps", "4", "--device", "cpu", "--resume", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["updates"] == 4
