"""Loading Stable-Baselines3 model files without running code from them.

An SB3 ``.zip`` keeps its tensors in ``.pth`` entries (which SB3 reads with
``torch.load(weights_only=True)``) and its other attributes in a JSON ``data``
entry, where every value JSON cannot hold (the spaces, the policy class, the
schedules, the episode buffers, ...) is a base64 cloudpickle. SB3's ``load``
unpickles those, and unpickling can run any code the file's author chose: a
crafted model file can run a shell command when it is loaded.

:func:`safe_custom_objects` decodes each pickled value here instead, with an
unpickler that may only build an allowlist of plain data types (Gymnasium
spaces, numpy arrays and dtypes, ``deque``, SB3's schedule classes) and the
classes ``policy_kwargs`` name (policies, torch modules such as activations
and feature extractors, optimizers) from ``torch``, ``stable_baselines3``,
``sb3_contrib`` and ``fw_agents``),
and hands the results to SB3 as ``custom_objects``, so SB3 unpickles nothing.
A value that needs anything else (a lambda schedule, a class from another
package) stops the load with :class:`UnsafeModelError`, unless the caller says
the file is trusted. The keys SB3 rebuilds itself on load (the last
observation and recurrent states of the collection loop) are not decoded at all.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

#: Attributes SB3 / RecurrentPPO rebuild on load (``_setup_model``, ``force_reset``): never decoded.
REBUILT_ON_LOAD = ("_last_obs", "_last_original_obs", "_last_episode_starts", "_last_lstm_states")

_PLAIN_GLOBALS = {
    ("builtins", name) for name in ("object", "set", "frozenset", "slice", "complex", "bytearray", "range")
} | {
    ("collections", "deque"),
    ("collections", "OrderedDict"),
    ("copyreg", "_reconstructor"),
    ("stable_baselines3.common.utils", "FloatSchedule"),
    ("stable_baselines3.common.utils", "ConstantSchedule"),
    ("stable_baselines3.common.utils", "LinearSchedule"),
}
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric", "numpy.dtypes", "numpy.random._pickle")  # fmt: skip
_NUMPY_NAMES = {"dtype", "ndarray", "_reconstruct", "_frombuffer", "scalar", "__generator_ctor", "__bit_generator_ctor",
                "__randomstate_ctor", "PCG64", "Generator", "MT19937", "Philox", "SFC64", "SeedSequence",
                "__pyx_unpickle_SeedSequence"}  # fmt: skip  (a seeded space's generator)
_POLICY_PACKAGES = ("stable_baselines3.", "sb3_contrib.", "fw_agents.")

A = TypeVar("A")


def _harmless_classes() -> tuple[type, ...]:
    """Classes whose construction runs no code chosen by the file: SB3 policies, torch modules
    (activations, feature extractors) and optimizers, from the packages allowed above."""
    import torch
    from stable_baselines3.common.policies import BasePolicy

    return BasePolicy, torch.nn.Module, torch.optim.Optimizer


class UnsafeModelError(ValueError):
    """A model file holds a pickled value that only a trusted file may be allowed to build."""


#: The modules a file may make the unpickler import (the rest must already be imported, so that
#: naming one runs nothing: an import runs the module's code, e.g. ``fw_agents.__main__`` trains).
_IMPORTABLE_MODULES = frozenset(
    {"stable_baselines3.common.policies", "stable_baselines3.common.torch_layers", "fw_agents.policies",
     "sb3_contrib.common.recurrent.policies", "sb3_contrib.ppo_recurrent.policies"}
    | {f"stable_baselines3.{algo}.policies" for algo in ("a2c", "ddpg", "dqn", "ppo", "sac", "td3")}
)  # fmt: skip
_IMPORTED_PREFIXES = ("gymnasium.spaces.", "numpy.random.", "torch.nn.modules.", "torch.optim.") + _POLICY_PACKAGES


def _may_import(module: str) -> bool:
    """Whether ``module`` may be looked up: one of the modules allowed above, or a module of an
    allowed package that is already imported (looking it up then runs no code)."""
    return module in _IMPORTABLE_MODULES or (module.startswith(_IMPORTED_PREFIXES) and module in sys.modules)


class _AllowlistUnpickler(pickle.Unpickler):
    """Builds only the allowlisted types; anything else raises :class:`UnsafeModelError`.

    Module and class names are matched before anything is imported: only an allowed name is
    looked up, so a file cannot make the load import (and so run) a module of its choice.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        if not (name.isidentifier() and (module in _NUMPY_MODULES or _may_import(module))):
            raise UnsafeModelError(f"{module}.{name}")  # nothing imported: a dotted name would walk attributes
        numpy = module in _NUMPY_MODULES or module.startswith("numpy.random.")
        if numpy and (name in _NUMPY_NAMES or name.endswith("DType")):
            return super().find_class(module, name)
        if module.startswith("gymnasium.spaces."):
            found = super().find_class(module, name)
            from gymnasium.spaces import Space

            if isinstance(found, type) and issubclass(found, Space):
                return found
        if module.startswith(_POLICY_PACKAGES) or module.startswith(("torch.nn.modules.", "torch.optim.")):
            found = super().find_class(module, name)
            if isinstance(found, type) and issubclass(found, _harmless_classes()):
                return found  # policy_kwargs name these: activation_fn, optimizer_class, features_extractor_class
        raise UnsafeModelError(f"{module}.{name}")


class _VecNormalizeUnpickler(_AllowlistUnpickler):
    """The allowlist, plus the two classes a ``VecNormalize.save`` file holds (its running means)."""

    ALLOWED = {("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
               ("stable_baselines3.common.running_mean_std", "RunningMeanStd")}  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return pickle.Unpickler.find_class(self, module, name)
        return super().find_class(module, name)


def load_vec_normalize(path: str | Path, venv: Any, trusted: bool = False) -> Any:
    """``VecNormalize.load(path, venv)`` through the allowlist unpickler (its statistics, spaces
    and settings are plain data), so a crafted ``vecnormalize.pkl`` cannot run code.

    :param path: The pickle ``VecNormalize.save`` wrote.
    :param venv: The env to wrap.
    :param trusted: Let ``pickle`` build anything (only for files you made or trust).
    :raises UnsafeModelError: The file needs a type outside the allowlist (one line).
    :raises ValueError: Not such a pickle (one line, naming the file).
    """
    from stable_baselines3.common.vec_env import VecNormalize

    if trusted:
        return VecNormalize.load(str(path), venv)
    try:
        with open(path, "rb") as file:
            loaded = _VecNormalizeUnpickler(file).load()
    except UnsafeModelError as error:
        raise UnsafeModelError(
            f"{path} needs {error}, which is not built from an untrusted file (unpickling can run code); "
            "load it only if you trust the file"
        ) from None
    except Exception as error:  # noqa: BLE001 - a corrupt pickle: truncation, bad opcodes
        raise ValueError(f"{path}: not a VecNormalize file ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, VecNormalize):
        raise ValueError(f"{path}: not a VecNormalize file (it holds a {type(loaded).__name__})")
    loaded.set_venv(venv)
    return loaded


def safe_custom_objects(path: str | Path, trusted: bool = False, replaced: Any = ()) -> dict[str, Any]:
    """``custom_objects`` for SB3's ``load`` that leave SB3 nothing to unpickle.

    :param path: The model ``.zip``.
    :param trusted: Decode nothing here and let SB3 unpickle the values (only for files you
        made or trust: unpickling runs code).
    :param replaced: Keys the caller's own ``custom_objects`` replace: not decoded (as SB3's
        ``load`` does not unpickle them either), so a schedule the file cannot give safely (a
        lambda, rl_zoo3's ``SimpleLinearSchedule``) may be replaced, as SB3's docs show.
    :return: Every pickled key of the file's ``data``, decoded by the allowlist unpickler
        (or ``None`` for :data:`REBUILT_ON_LOAD`); ``{}`` when ``trusted``.
    :raises ValueError: The file is not a readable SB3 model zip (one line, naming the file).
    :raises UnsafeModelError: A value needs a type outside the allowlist.
    """
    if trusted:
        return {}
    data = read_model_data(path)
    objects: dict[str, Any] = {}
    for key, item in data.items():
        if not (isinstance(item, dict) and ":serialized:" in item):
            continue
        if key in replaced:
            continue
        if key in REBUILT_ON_LOAD:
            objects[key] = None
            continue
        try:
            objects[key] = _AllowlistUnpickler(io.BytesIO(base64.b64decode(item[":serialized:"]))).load()
        except UnsafeModelError as error:
            raise UnsafeModelError(
                f"{path}: the saved {key!r} needs {error}, which is not built from an untrusted file "
                "(unpickling can run code); load it only if you trust the file (trusted=True)"
            ) from None
        except Exception as error:  # a corrupt pickle: base64, truncation, bad opcodes
            raise ValueError(f"{path}: the saved {key!r} is corrupt ({type(error).__name__}: {error})") from None
    return objects


def read_model_data(path: str | Path) -> dict[str, Any]:
    """The JSON ``data`` entry of an SB3 model zip, undecoded.

    :param path: The zip, or a file object; SB3's ``"model"`` for ``"model.zip"`` works too.
    :raises ValueError: No such file, not a zip (e.g. a half-written checkpoint), no ``data``
        entry, or ``data`` that is not a JSON object; the message names the file.
    """
    if isinstance(path, (str, Path)) and not Path(path).exists() and Path(f"{path}.zip").exists():
        path = Path(f"{path}.zip")  # as SB3's open_path adds the suffix
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                raise ValueError(f"{path} is not a Stable-Baselines3 model: it has no 'data' entry")
            text = archive.read("data").decode()
    except (OSError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read model {str(path)!r}: {error}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: its 'data' entry is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: its 'data' entry is not a JSON object")
    return data


def read_saved_memory_config(path: str | Path | io.BufferedIOBase) -> dict[str, Any] | None:
    """The core options a :class:`fw_agents.policies.RecurrentMemoryPolicy` saved in its state
    dict (``{"format", "memory", "memory_kwargs"}``), read without unpickling (``torch.load``
    with ``weights_only=True``).

    :param path: The model zip or a file object (left at its start).
    :return: The options (format 1's translated to today's names), or ``None``: another policy, a file from before they were saved, or
        a file that cannot be read (SB3's ``load`` then says why).
    """
    from fw_agents.policies import READABLE_CONFIG_FORMATS, resolve_memory_kwargs

    if isinstance(path, (str, Path)) and not Path(path).exists() and Path(f"{path}.zip").exists():
        path = Path(f"{path}.zip")
    try:
        with zipfile.ZipFile(path) as archive:
            if "policy.pth" not in archive.namelist():
                return None
            with archive.open("policy.pth") as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception:  # unreadable: not ours to report
        return None
    finally:
        if hasattr(path, "seek"):
            path.seek(0)
    saved = state.get("_extra_state") if isinstance(state, dict) else None
    ours = isinstance(saved, dict) and saved.get("format") in READABLE_CONFIG_FORMATS
    if not (ours and isinstance(saved.get("memory_kwargs"), dict)):
        return None
    # format 1 (normalize) in today's names; the saved options are complete: no defaults added
    return {**saved, "memory_kwargs": resolve_memory_kwargs(saved.get("memory"), saved["memory_kwargs"], base={})}


def load_model(
    algorithm: type[A] | Callable[..., A],
    path: str | Path,
    env: Any = None,
    trusted: bool = False,
    custom_objects: dict[str, Any] | None = None,
    **kwargs: Any,
) -> A:
    """``algorithm.load(path, env, ...)`` without unpickling anything from the file.

    :param algorithm: An SB3 algorithm class (``RecurrentPPO``, ``FastRecurrentPPO``, ``PPO``, ...).
    :param path: The model ``.zip``.
    :param env: The env to attach (as SB3's ``load``).
    :param trusted: Let SB3 unpickle the file's values (only for files you trust).
    :param custom_objects: Your own replacements; they win over the decoded values.
    :param kwargs: Passed on to ``load`` (``device``, ...).
    """
    objects = {**safe_custom_objects(path, trusted, replaced=custom_objects or {}), **(custom_objects or {})}
    return algorithm.load(path, env=env, custom_objects=objects, **kwargs)
