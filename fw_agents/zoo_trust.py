"""The zoo's ``enjoy`` without running code from the run folder it replays.

rl_zoo3's ``enjoy`` reads the run folder's ``config.yml`` and ``args.yml`` with PyYAML's
``UnsafeLoader`` (a ``!!python/object/apply:os.system`` tag runs a shell command), ``eval``\\ s a
``normalize`` string, imports the ``env_wrapper`` / ``vec_env_wrapper`` classes ``config.yml``
names, and unpickles the model zip and ``vecnormalize.pkl``. :func:`untrusted_enjoy` runs it
with each of these made safe: the YAML read by a safe loader that also rebuilds the zoo's own
``OrderedDict`` tag, ``normalize`` only as literal keyword arguments, no wrapper classes, and the
model and ``vecnormalize.pkl`` decoded by :mod:`fw_agents.runs.safe_load`'s allowlist. A file that
needs more is refused with :class:`UntrustedRunFolder` (one line); the user may pass
:data:`TRUST_FLAG` to replay a run folder they trust as the zoo would.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import yaml
from rl_zoo3 import enjoy as zoo_enjoy
from rl_zoo3 import utils as zoo_utils

from fw_agents.runs.safe_load import load_model, load_vec_normalize

#: The flag of ``python -m fw_agents.zoo enjoy`` that replays a run folder as the zoo would.
TRUST_FLAG = "--trust-checkpoint"

#: ``config.yml`` keys whose value names a class to import (``rl_zoo3.utils.get_wrapper_class``).
CLASS_KEYS = ("env_wrapper", "vec_env_wrapper", "callback")


class UntrustedRunFolder(ValueError):
    """A run folder file asks for code to run; only :data:`TRUST_FLAG` allows that."""


def _refusal(path: Any, what: str) -> UntrustedRunFolder:
    return UntrustedRunFolder(f"{path}: {what}, which could run code; pass {TRUST_FLAG} to replay a run folder you trust")


class _ZooYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus the one Python tag the zoo writes: ``OrderedDict`` of pairs."""


def _ordered_dict(loader: _ZooYamlLoader, node: yaml.Node) -> collections.OrderedDict:
    args = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else None
    if not (args and len(args) == 1 and all(isinstance(p, list) and len(p) == 2 for p in args[0])):
        raise yaml.constructor.ConstructorError(None, None, "an OrderedDict that is not a list of pairs", node.start_mark)
    return collections.OrderedDict(args[0])


_ZooYamlLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", _ordered_dict)


def safe_yaml_load(stream: Any) -> Any:
    """``stream`` (an open file or text) read by :class:`_ZooYamlLoader`.

    :raises UntrustedRunFolder: It holds another Python tag (one line, naming the file).
    """
    try:
        return yaml.load(stream, Loader=_ZooYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as error:
        tag = " ".join(str(error.problem or error).split())
        raise _refusal(getattr(stream, "name", "YAML"), f"holds a Python tag ({tag})") from None


class _SafeYaml:
    """What ``rl_zoo3.enjoy`` / ``rl_zoo3.utils`` see as ``yaml``: ``load`` ignores the loader asked for."""

    @staticmethod
    def load(stream: Any, Loader: Any = None) -> Any:  # noqa: N803 - PyYAML's name
        return safe_yaml_load(stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(yaml, name)


def _literal_keywords(text: str) -> bool:
    """Whether ``text`` is a literal or ``dict(name=literal, ...)`` (what ``eval`` may read safely)."""
    try:
        tree = ast.parse(text, mode="eval").body
        if isinstance(tree, ast.Call):
            if not (isinstance(tree.func, ast.Name) and tree.func.id == "dict" and not tree.args):
                return False
            values = [keyword.value for keyword in tree.keywords if keyword.arg is not None]
            if len(values) < len(tree.keywords):
                return False  # dict(**something)
        else:
            values = [tree]
        for value in values:
            ast.literal_eval(value)
        return True
    except (SyntaxError, ValueError, TypeError):
        return False


def _checked_saved_hyperparams(stats_path: str, *args: Any, **kwargs: Any) -> Any:
    """``rl_zoo3.utils.get_saved_hyperparams`` after refusing a ``config.yml`` that names classes
    to import or gives ``normalize`` as code (the zoo ``eval``\\ s it)."""
    path = os.path.join(stats_path, "config.yml")
    if os.path.isfile(path):
        with open(path) as file:
            saved = safe_yaml_load(file) or {}
        named = [key for key in CLASS_KEYS if saved.get(key)] if isinstance(saved, dict) else []
        if named:
            raise _refusal(path, f"names classes to import ({', '.join(f'{k}={saved[k]!r}' for k in named)})")
        normalize = saved.get("normalize") if isinstance(saved, dict) else None
        if isinstance(normalize, str) and not _literal_keywords(normalize):
            raise _refusal(path, f"gives normalize as code ({normalize!r}; the zoo evaluates it)")
    return zoo_utils.get_saved_hyperparams(stats_path, *args, **kwargs)


class _AllowlistAlgorithm:
    """``ALGOS[algo]`` for ``enjoy``: ``load`` decodes the model with the allowlist."""

    def __init__(self, algorithm: type) -> None:
        self.algorithm = algorithm

    def load(self, path: Any, **kwargs: Any) -> Any:
        return load_model(self.algorithm, path, **kwargs)


class _AllowlistVecNormalize:
    """``VecNormalize`` for ``rl_zoo3.utils.create_test_env``: ``load`` decodes with the allowlist."""

    load = staticmethod(load_vec_normalize)


@contextlib.contextmanager
def untrusted_enjoy() -> Iterator[None]:
    """Run the zoo's ``enjoy`` inside: nothing in the run folder may choose code to run (above)."""
    algorithms = {name: _AllowlistAlgorithm(algorithm) for name, algorithm in zoo_enjoy.ALGOS.items()}
    with contextlib.ExitStack() as stack:
        for module in (zoo_enjoy, zoo_utils):
            stack.enter_context(mock.patch.object(module, "yaml", _SafeYaml()))
        stack.enter_context(mock.patch.object(zoo_enjoy, "ALGOS", algorithms))
        stack.enter_context(mock.patch.object(zoo_enjoy, "get_saved_hyperparams", _checked_saved_hyperparams))
        stack.enter_context(mock.patch.object(zoo_utils, "VecNormalize", _AllowlistVecNormalize))
        yield
