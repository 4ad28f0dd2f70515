"""Where the project's MLflow store lives, and how several processes share it safely.

- **One store per project.** ``dvc exp run --queue`` / ``dvc queue start`` run each experiment in
  a temporary copy of the repository (``<project>/.dvc/tmp/exps/<tmp>/``) that DVC deletes
  afterwards. A store resolved relative to that copy would be deleted with it, so
  :func:`store_root` walks back to the project the copy was made from: every stage of every
  queued experiment logs into the ``mlflow.db`` (and ``mlartifacts/``) a plain ``dvc repro``
  uses.
- **Experiment tags.** Inside ``dvc exp run`` DVC sets ``DVC_EXP_NAME`` and
  ``DVC_EXP_BASELINE_REV``; :func:`dvc_experiment_tags` turns them into run tags so
  ``dvc exp show`` and the MLflow UI read side by side (``glide compare <exp-name>``).
- **Concurrent writers on SQLite.** ``dvc queue start -j 2`` runs two stage processes against one
  SQLite file. SQLite serialises writers: a transaction that finds the write lock taken waits
  (MLflow sets a 20 s busy timeout), but one that read first and then wants to write fails at
  once with "database is locked" (waiting could deadlock). :class:`RetryLocked` retries such a
  call (each MLflow store call is one transaction, rolled back on failure) for up to
  :data:`BUSY_TIMEOUT_S`, and the database runs in write-ahead-log mode so readers never block a
  writer. Creating the schema and the experiment, and a registry decision, run under
  :func:`store_lock` (an ``fcntl`` lock file beside the store), so two processes never race them.
"""

from __future__ import annotations

import fcntl
import functools
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BUSY_TIMEOUT_S = 120.0  # a locked call is retried this long
LOCK_DIR = ".glide-locks"  # beside mlflow.db; ignored by git and DVC
DVC_EXP_TMP = (".dvc", "tmp", "exps")  # where DVC puts a queued experiment's workspace
EXP_NAME_TAG = "dvc.exp_name"
EXP_BASELINE_TAG = "dvc.exp_baseline_rev"


def store_root(root: str | Path) -> Path:
    """The project folder whose ``mlflow.db`` a stage running in ``root`` must use: ``root``
    itself, or, when ``root`` is a DVC experiment's temporary workspace
    (``<project>/.dvc/tmp/exps/<tmp>[/...]``), ``<project>``."""
    path = Path(root).resolve()
    parts = path.parts
    n = len(DVC_EXP_TMP)
    for i in range(len(parts) - n, 0, -1):
        if parts[i : i + n] == DVC_EXP_TMP and len(parts) > i + n:
            return Path(*parts[:i])
    return path


def dvc_experiment_tags(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``{"dvc.exp_name": ..., "dvc.exp_baseline_rev": ...}`` inside ``dvc exp run``, else ``{}``."""
    env = os.environ if environ is None else environ
    tags = {}
    if env.get("DVC_EXP_NAME"):
        tags[EXP_NAME_TAG] = env["DVC_EXP_NAME"]
    if env.get("DVC_EXP_BASELINE_REV"):
        tags[EXP_BASELINE_TAG] = env["DVC_EXP_BASELINE_REV"]
    return tags


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


@contextmanager
def store_lock(uri: str, name: str, root: str | Path | None = None) -> Iterator[None]:
    """Hold the exclusive lock ``name`` of the store at ``uri`` (blocking): a file beside the
    SQLite database, or, for a server store, in ``<root>/.glide-locks`` (one machine's
    processes; a server serialises its own writes)."""
    db = sqlite_path(uri)
    if db is not None:
        folder = db.parent / LOCK_DIR
    elif root is not None:
        folder = store_root(root) / LOCK_DIR
    else:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" (another process holds the write lock), however wrapped."""
    return "database is locked" in str(exc)


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with jittered backoff for up to :data:`BUSY_TIMEOUT_S`
    while SQLite reports the database locked. Each MLflow store call is one transaction, rolled
    back when it fails, so a retry never writes twice."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)


class RetryLocked:
    """``obj`` (an ``MlflowClient``, the ``mlflow`` module) whose calls :func:`retry_locked`."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr) or isinstance(attr, type):
            return attr
        return functools.partial(retry_locked, attr)


def _use_wal(db: Path) -> None:
    """Switch the database to write-ahead logging (persistent): readers never block a writer,
    so a stage reading the store does not stall one that logs."""
    if not db.is_file():
        return
    con = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S)
    try:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def prepare_store(uri: str, experiment: str, *, root: str | Path) -> str:
    """Create the store's schema and ``experiment`` once, under :func:`store_lock`; return the
    experiment id. A new experiment on an SQLite store keeps its artifacts in ``mlartifacts/``
    beside the database, wherever the command ran."""
    import mlflow

    with store_lock(uri, "init", root):
        client = RetryLocked(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri))
        client.search_experiments(max_results=1)  # creates the tracking schema
        client.search_registered_models(max_results=1)  # and the registry's
        db = sqlite_path(uri)
        if db is not None:
            _use_wal(db)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return str(exp.experiment_id)
        artifacts = None if db is None else (db.parent / "mlartifacts").resolve().as_uri()
        return str(client.create_experiment(experiment, artifact_location=artifacts))
