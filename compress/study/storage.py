"""Where a study lives: Optuna's RDB storage (a SQLite file in the run folder, or a URL several workers share), opened
before anything trains, and its URL as it may be printed (never with its password)."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from compress.errors import CompressError

HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
"""A trial whose worker sent no heartbeat for this long is failed and run again (Optuna's RetryFailedTrialCallback)."""
OPEN_TRIES = 5
"""Workers started together on a new storage race to create its tables: the losers try again."""


def redacted(url: str) -> str:
    """A storage URL without its password (postgresql://user:***@host/db)."""
    # a user may be empty, a password may hold '/' (SQLAlchemy takes both); a password ends at the token's last @
    return re.sub(r"(://[^:/@\s]*):\S*@", r"\1:***@", str(url))


def storage_for(url: str | None, default: Path, *, flags: bool = True) -> Any:
    """Optuna's RDB storage at `url`, or a SQLite file at `default`; heartbeats so a dead worker's trial is retried.
    A URL that does not parse, names a missing driver, or cannot be reached: CompressError (its password hidden)."""
    import warnings

    import optuna
    import sqlalchemy.exc
    from optuna import storages

    default.parent.mkdir(parents=True, exist_ok=True)
    given = url is not None
    url = url or f"sqlite:///{default.resolve()}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
            retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
        else:
            retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=3)}
        for attempt in range(OPEN_TRIES):  # the last attempt returns or raises
            try:
                return storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                           engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                           else None, **retry)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, ValueError,
                    ImportError, RuntimeError) as exc:  # RuntimeError: a study another Optuna's schema made
                if attempt + 1 < OPEN_TRIES and _racing(exc):
                    time.sleep(0.5 * (attempt + 1))
                    continue
                why = redacted(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                expected = " (expected e.g. sqlite:///study.db or postgresql://user:pass@host/db)" if given else ""
                named = "--storage" if flags else "search(storage=...)"  # as the user gave it
                raise CompressError(f"{named} {redacted(url)}: Optuna could not open it: {why}{expected}") from None
    raise AssertionError(f"OPEN_TRIES is {OPEN_TRIES}: at least one try opens the storage or raises")


def _racing(exc: BaseException) -> bool:
    """Whether opening failed because another worker was creating the same study tables at that moment (workers
    started together on a new storage): worth another try."""
    import sqlalchemy.exc

    text = str(exc).lower()
    return isinstance(exc, sqlalchemy.exc.IntegrityError) or (
        isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError))
        and any(w in text for w in ("already exists", "duplicate", "database is locked")))
