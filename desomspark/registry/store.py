"""Where runs and models are stored: the tracking URI, and the lake's embedded SQLite store.

Embedded default: tracking and registry in ``sqlite:///<lake>/mlflow.db``,
artifacts under ``<lake>/mlartifacts``.  ``MLFLOW_TRACKING_URI`` in the
environment (an MLflow server on a cluster) wins, then ``mlflow.tracking_uri``
of the configuration.  A copied or moved lake's store is re-rooted here
before MLflow opens it (:func:`reroot_embedded_store`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing

from desomspark.config import MlflowConfig
from desomspark.errors import DesomsparkError
from desomspark.lake.layout import Lake

_LOG = logging.getLogger(__name__)

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


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/V`` -> (name, None, V); else None."""
    if not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    if "/" in rest:
        name, version = rest.split("/", 1)
        return name, None, version
    return None


def is_embedded(lake: Lake, cfg: MlflowConfig = MlflowConfig()) -> bool:
    """True when the lake's own SQLite store is the one in use (and it exists)."""
    if not lake.is_local or _USER_TRACKING_URI or cfg.tracking_uri:
        return False
    return os.path.exists(lake.path("mlflow.db"))


def read_embedded_version(lake: Lake, name: str, uri: str) -> tuple[str, str | None, str] | None:
    """(version, run id, download URI) of ``models:/name@alias`` or ``models:/name/V`` read straight
    from the lake's own SQLite store, or None where that store cannot answer it alone.

    Reading a registered model through MLflow's client costs 2 s of imports and schema checks;
    the small commands (``label``, ``similar``, ``verdicts``) only need these three values.  The
    queries are the ones MLflow's SQLAlchemy store runs (a version not deleted; its download URI
    is its storage location, else its source).  Any doubt -- an alias not set yet (the shipped
    defaults are registered through MLflow), a store of another schema -- returns None and the
    caller asks MLflow.
    """
    parsed = parse_model_uri(uri)
    if parsed is None or parsed[0] != name:
        return None
    _, alias, version = parsed
    reroot_embedded_store(lake)
    try:
        with closing(sqlite3.connect(f"file:{lake.path('mlflow.db')}?mode=ro", uri=True)) as db:
            if alias is not None:
                row = db.execute(
                    "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias)
                ).fetchone()
                if row is None:
                    return None
                version = str(row[0])
            row = db.execute(
                "SELECT version, run_id, storage_location, source FROM model_versions "
                "WHERE name = ? AND version = ? AND current_stage != 'Deleted_Internal'",
                (name, int(version)),
            ).fetchone()
    except (sqlite3.Error, ValueError) as err:  # another schema, a locked file, a version not a number
        _LOG.debug(f"registry: the embedded store could not answer {uri} alone ({err}); asking MLflow")
        return None
    if row is None:
        return None
    found, run_id, storage_location, source = row
    return str(found), run_id, storage_location or source
