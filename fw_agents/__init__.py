"""fw-agents: fast weights (Ba, Hinton et al., NIPS 2016) as memory cores for RL agents.

The main classes import from the package itself, as SB3's do (``from sb3_contrib import
RecurrentPPO``)::

    from fw_agents import FastRecurrentPPO, FastWeightsPolicy, FastWeightsRNN

They load on first use, so ``import fw_agents`` stays light: the supervised heads and the
memory cores never import Stable-Baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "FastRecurrentPPO": "fw_agents.algorithms",
    "FastWeightsPolicy": "fw_agents.policies",
    "RecurrentMemoryPolicy": "fw_agents.policies",
    "FastWeightsRNN": "fw_agents.memory",
    "MemoryCore": "fw_agents.memory",
    "make_memory": "fw_agents.memory",
    "MEMORY_NAMES": "fw_agents.memory",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fw_agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
