"""The storage side of :mod:`fw_agents.search`: the sampler, the Optuna RDB storage with
heartbeats and retries, and the study's bookkeeping. Optuna is imported only when called."""

from __future__ import annotations

import inspect
import os
import random
import re
import socket
import time
import warnings
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

#: Times a trial whose worker died is queued again.
MAX_RETRY = 3

#: The environment variable ``--storage-from-env`` reads the storage URL from (how ``--workers``
#: hands its workers the URL: a command line, password included, is visible to every local user).
STORAGE_ENV = "FW_SEARCH_STORAGE"


def storage_from_env() -> str:
    """The storage URL in ``$FW_SEARCH_STORAGE`` (:data:`STORAGE_ENV`), checked by :func:`check_storage_url`.

    :raises ValueError: Not set, empty, or a URL the search cannot use (one line).
    """
    url = os.environ.get(STORAGE_ENV, "").strip()
    if not url:
        raise ValueError(f"--storage-from-env: ${STORAGE_ENV} is not set; set it to the storage URL or pass --storage URL")
    return check_storage_url(url)


def check_storage_flags(storage: str | None, from_env: bool) -> None:
    """Check ``--storage`` (:func:`check_storage_url`) and that ``--storage-from-env`` does not
    give it a second time. :raises ValueError: One line naming the flag."""
    if from_env and storage is not None:
        raise ValueError(f"--storage and --storage-from-env both give the storage; pass one (the URL, or ${STORAGE_ENV})")
    if storage is not None:
        check_storage_url(storage)


#: Default SQLite URL ``sqlite://`` and these databases live in the memory of one connection.
_IN_MEMORY_SQLITE = re.compile(r"^(:memory:|file::memory:.*)$|[?&]mode=memory(&|$)")


def check_storage_url(url: str) -> str:
    """:return: ``url``. :raises ValueError: ``url`` is no database URL, or an in-memory SQLite
    database (``sqlite://``, ``sqlite:///:memory:``, ``mode=memory``): each of its connections is
    a database of its own, so the heartbeat thread, the ``--workers`` and the final report (let
    alone a later run, to resume) could never see the trials. A study to keep nowhere is no
    use to a search whose trials take minutes; the default file resumes."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"storage must be a database URL such as sqlite:///PATH or postgresql+psycopg://..., got {url!r}")
    database = rest.split("/", 1)[1] if "/" in rest else ""
    if scheme.split("+")[0] == "sqlite" and (not database or _IN_MEMORY_SQLITE.search(database)):
        raise ValueError(
            f"--storage {url} is an in-memory SQLite database, which the heartbeats, the workers and a resumed run "
            f"cannot share; give sqlite:///PATH, or leave --storage out (sqlite:///<runs-root>/search/<study>.db)"
        )
    return url


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``--sampler`` (``random`` or ``tpe``) with seed ``seed``."""
    import optuna

    if kind == "tpe":

        class TrialSeededTPESampler(optuna.samplers.TPESampler):
            """TPE whose random state is set from (seed, trial number) before each trial: workers
            never share a draw (their trials' numbers differ), and one worker's study is the same
            run after run (a seed from the worker's pid made even that irreproducible)."""

            def before_trial(self, study: Any, trial: Any) -> None:
                key = zlib.crc32(f"{seed}:{trial.number}".encode())
                for state in (getattr(self, "_rng", None), getattr(getattr(self, "_random_sampler", None), "_rng", None)):
                    if hasattr(state, "rng"):  # Optuna's LazyRandomState (4.x, 5.x); else the salted seed below
                        state.rng.seed(key)
                super().before_trial(study, trial)

        # salted per worker, so that workers still draw apart should a later Optuna move the states
        return TrialSeededTPESampler(seed=zlib.crc32(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode()))

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


def _passwords(url: str) -> list[str]:
    """The password of ``url`` as typed (between the scheme's ``user:`` and the LAST ``@``: a
    password with a raw ``@``, ``:`` or ``/`` is still all of it), a ``password=`` query value,
    and their ``@ : /``-separated pieces, which a parser that split the URL elsewhere shows
    as a host or a port. Longest first."""
    found = []
    _, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    found += re.findall(r"[?&]password=([^&#]*)", url)
    pieces = [piece for secret in found for piece in re.split(r"[@:/]", secret) if len(piece) >= 2]
    return sorted({secret for secret in [*found, *pieces] if secret}, key=len, reverse=True)


def scrub_password(text: str, url: str) -> str:
    """``text`` (``url`` itself, or an error message about it) with ``url``'s password as ``***``."""
    for secret in _passwords(url):
        text = text.replace(secret, "***")
    return text


def hidden_password(url: str) -> str:
    """``url`` with its password as ``***`` (for messages)."""
    scheme, sep, rest = url.partition("://")
    userinfo = rest.partition("@")[0]
    if sep and rest.count("@") == 1 and "/" not in userinfo and "?" not in userinfo:
        # unambiguous user:password@host: hide that field alone (a short password, or one that is
        # also the user, host or database name, must not blank those out wherever they occur)
        rest = re.sub(r"^([^:@]*:)[^@]*@", r"\1***@", rest)
        return re.sub(r"([?&]password=)[^&#]*", r"\1***", f"{scheme}{sep}{rest}")
    return scrub_password(url, url)


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeats every ``heartbeat`` s and stale trials retried.

    :raises ValueError: ``url`` is not a database URL (:func:`check_storage_url`), or the database cannot be reached.
    """
    import optuna
    from optuna.exceptions import ExperimentalWarning

    check_storage_url(url)
    if url.startswith("sqlite"):
        engine: dict[str, Any] = dict(connect_args={"timeout": 60})  # workers wait for each other's writes
    else:  # a server: fail fast when it is unreachable, survive idle hours between reports
        engine = dict(connect_args={"connect_timeout": 10}, pool_pre_ping=True)
    callback_name = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
        else "failed_trial_callback"
    )
    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                    **{callback_name: retry_callback()},
                )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors alike
            if attempt < SCHEMA_RACE_RETRIES and _schema_race(error):
                # workers started together on an empty database: another one is creating Optuna's
                # tables (a duplicate table, type or alembic row); once it has, they are there to use
                time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
                continue
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            message = scrub_password(f"{type(error).__name__}: {first}", url)
            raise ValueError(f"cannot open storage {hidden_password(url)}: {message}") from None
    raise AssertionError("unreachable")


#: Times ``open_storage`` tries again when another worker is creating the schema at the same time.
SCHEMA_RACE_RETRIES = 8


def _schema_race(error: BaseException) -> bool:
    """Whether ``error`` is another process creating Optuna's schema at the same time (SQLite:
    "table ... already exists", alembic's version row; PostgreSQL: duplicate type/table/key)."""
    try:
        from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
    except ImportError:  # pragma: no cover - optuna's RDB storage needs SQLAlchemy
        return False
    text = str(error).lower()
    if isinstance(error, IntegrityError):
        return True
    if isinstance(error, (ProgrammingError, OperationalError)):
        return any(s in text for s in ("already exists", "duplicate", "database is locked"))
    return False


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


def taken_over(error: BaseException, study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether ``error`` is Optuna refusing to finish ``trial`` because it is no longer running
    (another worker failed it as stale), rather than anything else."""
    from optuna.trial import TrialState

    if not (isinstance(error, ValueError) and str(error).startswith("Cannot tell a")):
        return False
    return study._storage.get_trial(trial._trial_id).state == TrialState.FAIL
