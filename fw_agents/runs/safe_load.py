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
import contextlib
import io
import json
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from fw_agents.runs.files import format_bytes, open_regular_file
from fw_agents.validation import check_bool, check_float, check_int

#: Largest model zip read (and the most its entries may unpack to in all).
MAX_MODEL_BYTES = 4 * 2**30
#: Largest ``data`` entry (JSON, with the pickled spaces and episode buffers in base64; usually < 1 MiB).
MAX_MODEL_DATA_BYTES = 64 * 2**20
#: Largest step or update count a model may say (int64, as numpy, torch and TensorBoard keep them).
MAX_COUNT = 2**63 - 1

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
    :raises ValueError: The file is not a readable SB3 model zip, or a saved field (JSON or
        decoded) is out of its type or range (:func:`check_model_data`): one line, naming the file.
    :raises UnsafeModelError: A value needs a type outside the allowlist.
    """
    data = read_model_data(path, replaced)  # a regular file of bounded size, its JSON fields checked, even when trusted
    if trusted:
        return {}
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
    check_model_data(objects, path)  # the decoded values, as the JSON ones were
    return objects


def read_model_data(path: str | Path, replaced: Any = ()) -> dict[str, Any]:
    """The JSON ``data`` entry of an SB3 model zip, undecoded, its fields checked (:func:`check_model_data`).

    Only a regular file of at most :data:`MAX_MODEL_BYTES` is opened (never a FIFO or a device:
    :func:`fw_agents.runs.files.open_regular_file`), and only a zip whose entries unpack to at most that
    in all, with a ``data`` entry of at most :data:`MAX_MODEL_DATA_BYTES`, is read.

    :param path: The zip, or a file object; SB3's ``"model"`` for ``"model.zip"`` works too.
    :param replaced: Keys the caller's ``custom_objects`` replace: not checked.
    :raises ValueError: No such file, not a regular file, too large, not a zip (e.g. a half-written
        checkpoint), no ``data`` entry, ``data`` that is not a JSON object, or a field out of its
        type or range; the message names the file.
    """
    if isinstance(path, (str, Path)) and not Path(path).exists() and Path(f"{path}.zip").exists():
        path = Path(f"{path}.zip")  # as SB3's open_path adds the suffix
    try:
        with contextlib.ExitStack() as stack:
            file = path  # a file object: the caller's
            if isinstance(path, (str, Path)):
                file = stack.enter_context(open_regular_file(path, MAX_MODEL_BYTES, "model"))
            archive = stack.enter_context(zipfile.ZipFile(file))
            _check_entry_sizes(archive, path)
            text = archive.read("data").decode()
    except (OSError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read model {str(path)!r}: {error}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path}: its 'data' entry is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: its 'data' entry is not a JSON object")
    check_model_data(data, path, replaced)
    return data


def _check_entry_sizes(archive: zipfile.ZipFile, path: Any) -> None:
    """Refuse a zip without ``data``, or whose entries would unpack to more than the bounds (a zip
    bomb): the sizes its directory declares, which ``zipfile`` never reads past."""
    infos = archive.infolist()
    data = next((info for info in infos if info.filename == "data"), None)
    if data is None:
        raise ValueError(f"{path} is not a Stable-Baselines3 model: it has no 'data' entry")
    total = sum(info.file_size for info in infos)
    for entry, size, bound in (("'data' entry", data.file_size, MAX_MODEL_DATA_BYTES), ("entries", total, MAX_MODEL_BYTES)):
        if size > bound:
            raise ValueError(f"model {str(path)!r}: its {entry} unpack to {format_bytes(size)}, more than the "
                             f"{format_bytes(bound)} accepted")  # fmt: skip


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


# ----------------------------------------------------------------- saved fields
def _count(low: int = 0, high: int = MAX_COUNT) -> Callable[[str, Any], Any]:
    return lambda name, value: check_int(name, value, low, high)


def _fraction(name: str, value: Any) -> Any:
    return check_float(name, value, 0, 1, low_inclusive=True, high_inclusive=True)


def _at_least_zero(name: str, value: Any) -> Any:
    return check_float(name, value, 0, low_inclusive=True)


def _positive(name: str, value: Any) -> Any:
    return check_float(name, value, 0)


def _finite(name: str, value: Any) -> Any:
    return check_float(name, value)


def _or_auto(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``check``, or SAC's ``"auto"`` / ``"auto_<initial value>"``."""
    return lambda name, value: value if isinstance(value, str) and value.startswith("auto") else check(name, value)


def _or_schedule(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``check``, or a schedule (a callable of the progress remaining, as SB3 keeps it once decoded)."""
    return lambda name, value: value if callable(value) else check(name, value)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def _mapping(name: str, value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict (a JSON object), got {value!r:.80}")
    return value


def _text(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r:.80}")
    return value


#: The fields of a model's ``data`` that SB3 / sb3-contrib's on-policy algorithms compute with after
#: a load, and what each must be: SB3 checks none of them, so a file saying ``num_timesteps: 1e400``,
#: ``[1]`` or ``-100`` made a traceback far from the file, or a run counting from -100.
MODEL_FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    **{name: _count() for name in ("num_timesteps", "_total_timesteps", "_num_timesteps_at_start", "_n_updates",
                                   "_episode_num", "verbose")},  # fmt: skip
    **{name: _count(1) for name in ("n_envs", "n_steps", "n_epochs", "_stats_window_size")},
    "batch_size": _optional(_count(1)),
    "seed": _optional(_count(0, 2**32 - 1)),  # numpy's seed range
    "sde_sample_freq": _count(-1),  # -1: only at the start of a rollout
    "use_sde": check_bool,
    "normalize_advantage": check_bool,
    "gamma": _fraction,
    "gae_lambda": _fraction,
    "_current_progress_remaining": _finite,  # below 0 once a rollout overshoots the total
    "ent_coef": _or_auto(_at_least_zero),  # SAC's "auto" / "auto_0.1": load_model takes any algorithm
    "vf_coef": _at_least_zero,
    "max_grad_norm": _at_least_zero,
    "target_kl": _optional(_positive),
    "learning_rate": _or_schedule(_at_least_zero),
    "clip_range": _or_schedule(_at_least_zero),
    "clip_range_vf": _optional(_or_schedule(_at_least_zero)),
    "policy_kwargs": _mapping,
    "rollout_buffer_kwargs": _optional(_mapping),
}
#: The keys of ``policy_kwargs`` this package's policies read, checked likewise.
POLICY_KWARGS_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "memory": _text, "hidden_size": _count(1), "memory_kwargs": _mapping, "critic": _text,
}  # fmt: skip


def check_model_data(data: dict[str, Any], path: Any = "model", skip: Any = ()) -> None:
    """Check the fields of a model's ``data`` (:data:`MODEL_FIELD_CHECKS`, and
    :data:`POLICY_KWARGS_CHECKS` inside ``policy_kwargs``) that it holds as plain values: JSON ones,
    or values decoded from their pickles (a still-pickled value is skipped).

    :param data: The ``data`` entry, or the decoded values (:func:`safe_custom_objects`).
    :param path: The file, for the message.
    :param skip: Keys not checked: those the caller's ``custom_objects`` replace (SB3 does not use them).
    :raises ValueError: One line naming the file, the field and its value, and what is accepted:
        ``m.zip: saved num_timesteps must be an integer in [0, 9223372036854775807], got inf``.
    """
    checks = [(name, check, data[name]) for name, check in MODEL_FIELD_CHECKS.items() if name in data and name not in skip]
    kwargs = data.get("policy_kwargs")
    if isinstance(kwargs, dict) and "policy_kwargs" not in skip:
        checks += [(f"policy_kwargs.{name}", check, kwargs[name]) for name, check in POLICY_KWARGS_CHECKS.items()
                   if name in kwargs]  # fmt: skip
    for name, check, value in checks:
        if isinstance(value, dict) and ":serialized:" in value:
            continue  # decoded (and checked then) by safe_custom_objects, or trusted to SB3
        try:
            check(name, value)
        except ValueError as error:
            raise ValueError(f"{path}: saved {error}") from None
