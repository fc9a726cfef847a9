"""The storage side of :mod:`fw_agents.search`: the sampler, the Optuna RDB storage with
heartbeats and retries, and the study's bookkeeping. Optuna is imported only when called."""

from __future__ import annotations

import inspect
import os
import re
import socket
import warnings
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

#: Times a trial whose worker died is queued again.
MAX_RETRY = 3


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``--sampler`` (``random`` or ``tpe``) with seed ``seed``."""
    import optuna

    if kind == "tpe":  # workers must not share a seed: each would propose the same points
        return optuna.samplers.TPESampler(seed=zlib.crc32(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode()))

    class TrialSeededRandomSampler(optuna.samplers.RandomSampler):
        """``RandomSampler`` whose draw of a parameter depends on (seed, trial number, name) only:
        trial k gets the same hyper-parameters whichever worker runs it, and workers never
        propose the same point."""

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            key = zlib.crc32(f"{seed}:{trial.number}:{param_name}".encode())
            return optuna.samplers.RandomSampler(seed=key).sample_independent(
                study, trial, param_name, param_distribution
            )

    return TrialSeededRandomSampler(seed=seed)


def retry_callback() -> Any:
    import optuna
    from optuna.exceptions import ExperimentalWarning

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():  # Optuna's own label on a callback it has shipped since 2.8
        warnings.simplefilter("ignore", ExperimentalWarning)
        return retry(max_retry=MAX_RETRY)


def hidden_password(url: str) -> str:
    """``url`` with its password as ``***`` (for messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: say so with the text itself
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats every ``heartbeat`` s and stale trials retried.

    :raises ValueError: ``url`` is not a database URL, or the database cannot be reached.
    """
    import optuna
    from optuna.exceptions import ExperimentalWarning

    if "://" not in url:
        raise ValueError(f"storage must be a database URL such as sqlite:///PATH or postgresql+psycopg://..., got {url!r}")
    if url.startswith("sqlite"):
        engine: dict[str, Any] = dict(connect_args={"timeout": 60})  # workers wait for each other's writes
    else:  # a server: fail fast when it is unreachable, survive idle hours between reports
        engine = dict(connect_args={"connect_timeout": 10}, pool_pre_ping=True)
    callback_name = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
        else "failed_trial_callback"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                **{callback_name: retry_callback()},
            )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors alike
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot open storage {hidden_password(url)}: {type(error).__name__}: {first}") from None


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and queue retries of) the trials whose worker stopped sending heartbeats."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def study_size(study: optuna.Study) -> tuple[int, int]:
    """``(trials, queued)``: trials finished, running or queued, a failed one that was queued
    again counted once; ``queued``: those waiting for a worker."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} | {
        n for t in trials for n in t.system_attrs.get("retry_history", ())
    }
    failed_and_retried = sum(t.state == TrialState.FAIL and t.number in retried for t in trials)
    return len(trials) - failed_and_retried, sum(t.state == TrialState.WAITING for t in trials)
