"""Where runs and models are stored: the tracking URI, and the lake's embedded SQLite store.

Embedded default: tracking and registry in ``sqlite:///<lake>/mlflow.db``,
artifacts under ``<lake>/mlartifacts``.  ``MLFLOW_TRACKING_URI`` in the
environment (an MLflow server on a cluster) wins, then ``mlflow.tracking_uri``
of the configuration.  A copied or moved lake's store is re-rooted here
before MLflow opens it (:func:`reroot_embedded_store`).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from desomspark.config import MlflowConfig
from desomspark.errors import DesomsparkError
from desomspark.lake.layout import Lake

# The user's MLFLOW_TRACKING_URI, read once: mlflow.set_tracking_uri() writes the
# variable itself, and a process that uses two lakes must not inherit the first one's store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class RegistryError(DesomsparkError, RuntimeError):
    """MLflow is unreachable or a model/version/alias is missing."""


def unreachable(exc: BaseException) -> bool:
    """True if ``exc`` (any kind MLflow's client raises) says the server did not answer."""
    text = f"{type(exc).__name__}: {exc}"
    return isinstance(exc, ConnectionError) or any(
        s in text for s in ("ConnectionError", "Connection refused", "Max retries exceeded", "timed out")
    )


def tracking_uri(lake: Lake, cfg: MlflowConfig = MlflowConfig()) -> str:
    """The environment's MLFLOW_TRACKING_URI, else the configuration's, else the lake's sqlite store."""
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if not lake.is_local:
        raise RegistryError("a remote lake needs an MLflow server: set MLFLOW_TRACKING_URI")
    os.makedirs(lake.root, exist_ok=True)
    return f"sqlite:///{lake.path('mlflow.db')}"


def _artifact_root(lake: Lake) -> str:
    return "file://" + lake.path("mlartifacts")


def _home_default_experiment(lake: Lake) -> None:
    """MLflow creates a ``Default`` experiment with the working directory's ``./mlruns`` as its
    location when it makes a store: in the lake's own store it lives in the lake like the rest.
    """
    with closing(sqlite3.connect(lake.path("mlflow.db"))) as db, db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0 AND "
            "substr(artifact_location, 1, ?) != ?",
            (_artifact_root(lake) + "/0", len(_artifact_root(lake)), _artifact_root(lake)),
        )


def reroot_embedded_store(lake: Lake) -> int:
    """Make a copied or moved lake's own MLflow store point at the lake where it now is.

    MLflow records absolute artifact locations (experiment, runs, logged
    models, model versions).  A lake carries its ``mlartifacts/`` beside its
    ``mlflow.db``, so when the recorded root is not the lake's present one,
    every recorded location under the old root is rewritten under the new
    root -- in this store only: the lake it was copied from is untouched.
    MLflow has no API to move artifact locations; the store is the lake's own
    SQLite file, so the rewrite is a few SQL ``UPDATE`` statements, done
    before MLflow opens the file.  Returns the number of values rewritten.
    """
    path = lake.path("mlflow.db")
    if not os.path.exists(path):
        return 0
    new_root = _artifact_root(lake)
    # closing(): sqlite3's own context manager commits but leaves the connection open
    with closing(sqlite3.connect(path)) as db, db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        roots = {
            loc
            for (loc,) in db.execute("SELECT artifact_location FROM experiments")
            if loc and loc.startswith("file://") and loc.rstrip("/").endswith("/mlartifacts")
        }
        changed = 0
        for old_root in roots - {new_root}:
            for table in sorted(tables):
                for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if not str(kind).upper().startswith(("VARCHAR", "TEXT")):
                        continue
                    cursor = db.execute(
                        f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                        f'WHERE substr("{column}", 1, ?) = ?',
                        (new_root, len(old_root) + 1, len(old_root), old_root),
                    )
                    changed += cursor.rowcount
    return changed
