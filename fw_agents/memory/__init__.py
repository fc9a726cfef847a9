"""Recurrent memory cores behind one interface (see :class:`MemoryCore`).

>>> core = make_memory("fastweights", input_size=128, hidden_size=128)
>>> y, state = core(x, state, episode_starts)   # x: [T, B, 128] -> y: [T, B, 128]

Adding a core is one new module plus one line in :data:`MEMORY_REGISTRY`. Importing this package
pulls no torch: the interface (:class:`MemoryCore`) and the cores load on first use, so the
registry's names (and :mod:`fw_agents.memory.options`) are plain data for the config.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fw_agents.memory.base import MemoryCore, State

#: name -> "module:ClassName" of every core, imported on first use.
MEMORY_REGISTRY: dict[str, str] = {
    "fastweights": "fw_agents.memory.fast_weights:FastWeightsRNN",
    "lstm": "fw_agents.memory.rnn:LSTMCore",
    "gru": "fw_agents.memory.rnn:GRUCore",
    "irnn": "fw_agents.memory.rnn:IRNNCore",
    "alstm": "fw_agents.memory.alstm:AssociativeLSTMCore",
    "none": "fw_agents.memory.feedforward:NoMemoryCore",
}

#: The built-in cores' names (what the command lines offer); a core added to the registry at
#: run time is accepted by make_memory, the policy and train() too.
MEMORY_NAMES: tuple[str, ...] = tuple(MEMORY_REGISTRY)


def memory_class(name: str) -> type[MemoryCore]:
    """The class registered under ``name``; ``ValueError`` listing the valid names otherwise."""
    if not isinstance(name, str) or name not in MEMORY_REGISTRY:
        raise ValueError(f"unknown memory {name!r}; choose one of {', '.join(MEMORY_REGISTRY)}")
    module_name, class_name = MEMORY_REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def memory_options(name: str) -> tuple[str, ...]:
    """The options the core registered under ``name`` takes: its constructor's parameters
    after the sizes (``()`` for ``lstm``, ``gru``, ``none``)."""
    parameters = inspect.signature(memory_class(name)).parameters
    return tuple(key for key in parameters if key not in ("input_size", "hidden_size"))


def make_memory(name: str, input_size: int, hidden_size: int, **kwargs: Any) -> MemoryCore:
    """Build the memory core registered under ``name``.

    :param name: One of :data:`MEMORY_NAMES`.
    :param input_size: Number of input features.
    :param hidden_size: Width of the core (its output size).
    :param kwargs: Core-specific options (e.g. ``fast_lr``, ``decay`` for fast weights:
        :func:`memory_options`).
    :raises ValueError: An unknown name or option (naming the accepted ones), or a bad value.
    """
    accepted = memory_options(name)
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:  # a misspelt key in policy_kwargs' memory_kwargs lands here
        raise ValueError(f"unknown option {unknown[0]!r} for memory {name!r}; accepted: {', '.join(accepted) or 'none'}")
    return memory_class(name)(input_size, hidden_size, **kwargs)


_LAZY_CLASSES = {path.split(":")[1]: name for name, path in MEMORY_REGISTRY.items()}


def __getattr__(attr: str) -> Any:  # PEP 562: `from fw_agents.memory import FastWeightsRNN`
    if attr in _LAZY_CLASSES:
        return memory_class(_LAZY_CLASSES[attr])
    if attr in ("MemoryCore", "State"):
        return getattr(importlib.import_module("fw_agents.memory.base"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["MEMORY_NAMES", "MEMORY_REGISTRY", "MemoryCore", "State", "make_memory", "memory_class", "memory_options", *_LAZY_CLASSES]
