"""The package's top level: the main classes import from ``fw_agents`` itself, lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import fw_agents


def test_top_level_names_are_the_modules_own_objects():
    for name, module in fw_agents._EXPORTS.items():
        assert getattr(fw_agents, name) is getattr(importlib.import_module(module), name), name
    assert set(fw_agents._EXPORTS) <= set(dir(fw_agents)) and set(fw_agents._EXPORTS) <= set(fw_agents.__all__)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'FastWeightPolicy'"):
        fw_agents.FastWeightPolicy  # noqa: B018 - a typo of FastWeightsPolicy
    assert not hasattr(fw_agents, "nope")


def test_importing_the_package_imports_neither_torch_nor_sb3():
    code = "import sys, fw_agents; print(sorted(m for m in ('torch', 'stable_baselines3', 'sb3_contrib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", ["fw_agents.config", "fw_agents.fields", "fw_agents.memory.options"])
def test_the_config_is_a_leaf_that_imports_neither_torch_nor_gymnasium_nor_sb3(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('torch', 'gymnasium', 'stable_baselines3', 'sb3_contrib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_the_config_still_checks_what_needs_torch_and_gymnasium():
    from fw_agents.config import TrainConfig

    with pytest.raises(ValueError, match="unknown env id 'NoSuchEnv-v0'"):
        TrainConfig(env="NoSuchEnv-v0").validate()
    with pytest.raises(ValueError, match="unknown memory_kwargs key 'nope' for memory fastweights"):
        TrainConfig(memory_kwargs={"nope": 1}).validate()
