"""The Optuna storage a study lives in, and opening (or joining) the study there.

The storage is an SQLite file by default, or any RDB URL shared by several machines; it is
also the record that lets an interrupted search resume. Trial heartbeats let another worker
retry the trial of one that died.

Example:
    >>> storage = open_storage("sqlite:///search.db")  # doctest: +SKIP
"""

import time
import warnings

import optuna
from optuna import storages

from tfedge.core.errors import OptimizationError
from tfedge.models.search.objectives import _directions

__all__ = ["open_storage", "HEARTBEAT_S", "GRACE_S"]

HEARTBEAT_S = 5
GRACE_S = 20


def _mask(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"


def open_storage(url: str):
    """Open an Optuna RDB storage (SQLite file, PostgreSQL, MySQL) with trial heartbeats.

    Heartbeats let a crashed or killed worker's trial be failed after :data:`GRACE_S` seconds and
    retried once by another worker (Optuna's ``RetryFailedTrialCallback``).

    Raises:
        OptimizationError: the URL is malformed, its driver is missing or the database cannot be
            reached.

    Example:
        >>> storage = open_storage("sqlite:///search.db")  # doctest: +SKIP
    """

    if not isinstance(url, str) or "://" not in url:
        raise OptimizationError(
            f"storage URL {url!r} is not a database URL",
            "use sqlite:///path/search.db or postgresql://USER:PASSWORD@HOST:PORT/DB",
            option="storage",
        )
    last = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # Optuna >= 4.9 names the retry callback for stale heartbeats; older ones the other.
                if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
                    callback = storages.RetryHeartbeatStaleTrialCallback(1)
                    retry = {"heartbeat_stale_trial_callback": callback}
                else:
                    retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(1)}
                return storages.RDBStorage(
                    _with_driver(url),
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    engine_kwargs=_engine_kwargs(url),
                    **retry,
                )
        except Exception as exc:  # SQLAlchemy/driver errors have many types; all mean "cannot open"
            last = exc
            # Workers that start together on an empty database race to create Optuna's tables:
            # the loser sees "already exists" (PostgreSQL) or a unique-constraint failure on
            # alembic_version (SQLite) and only has to try again.
            racing = "already exists" in str(exc) or type(exc).__name__ == "IntegrityError"
            if not racing or attempt == 4:
                break
            time.sleep(0.5 + attempt)
    text = " ".join(str(last).split())[:300]
    raise OptimizationError(
        f"cannot open the storage {_mask(url)}: {type(last).__name__}: {text}",
        "check the URL, that the database server is up and reachable, and that its "
        "driver is installed (psycopg2 for postgresql://)",
        option="storage",
    ) from last


def _with_driver(url: str) -> str:
    """``postgresql://`` through psycopg2 (tfedge's dependency) unless psycopg 3 is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3.
    """
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        import importlib.util

        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        return f"postgresql+{driver}://{rest}"
    return url


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # Several processes may share one file (resume while another finishes): wait for locks.
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


def _quiet_optuna():

    # ERROR: Optuna logs each failed trial with its traceback at WARNING; the search records
    # the failure (the candidate's error) and reports it itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _open_study(
    storage, study_name, objective, fingerprint, resume, sampler, seed_params, wait_s=30.0
):
    """Create the study (and say so) or load it, checking it belongs to this model and objective."""

    directions = _directions(objective)
    created = False
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name, directions=directions, sampler=sampler
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)
    if created:
        if resume:
            optuna.delete_study(study_name=study_name, storage=storage)
            raise OptimizationError(
                f"nothing to resume: the storage has no study {study_name!r}",
                "run the same command without --resume to start the search",
            )
        for params in seed_params:  # before the fingerprint: joining workers wait for it
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("objective", objective)
        study.set_user_attr("fingerprint", fingerprint)
        return study, True
    deadline = time.time() + wait_s  # another worker may have created it an instant ago
    while "fingerprint" not in study.user_attrs and time.time() < deadline:
        time.sleep(0.5)
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)
    attrs = study.user_attrs
    theirs = attrs.get("fingerprint")
    if theirs is None:
        raise OptimizationError(
            f"study {study_name!r} was not made by tfedge's search (no model fingerprint)",
            "pick another study name with --study",
        )
    if theirs != fingerprint:
        differ = sorted(
            k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k)
        )
        raise OptimizationError(
            f"study {study_name!r} belongs to another model or setup: its "
            f"{', '.join(differ)} fingerprint differs from this run's",
            "pick another --study name (or output folder), or run with the study's model, data "
            "and settings",
        )
    if attrs.get("objective") != objective:
        raise OptimizationError(
            f"study {study_name!r} searches objective {attrs.get('objective')!r}, not {objective!r}",
            "pick another --study name for another objective",
        )
    return study, False
