"""MLflow: where runs are tracked and models registered.

Embedded default: tracking and registry in ``sqlite:///<lake>/mlflow.db``,
artifacts under ``<lake>/mlartifacts``.  ``MLFLOW_TRACKING_URI`` in the
environment (an MLflow server on a cluster) wins, then ``mlflow.tracking_uri``
of the configuration.

Models are registered as ``desom1`` and ``desom2``; a new version gets alias
``challenger``, and ``promote`` moves ``champion``, which the nightly job uses.

Everything about models lives here: connecting, registering, promoting,
resolving a champion (:func:`resolve_model`, registering the shipped defaults
on a fresh lake), loading a served model once per worker
(:func:`cached_model`) and refusing a DESOM-2 fed by another DESOM-1
(:func:`check_desom1`, :class:`ModelMismatch`).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .config import Config, MlflowConfig
from .errors import DesomsparkError, UserError
from .lake import Lake

_LOG = logging.getLogger(__name__)


CHAMPION = "champion"
CHALLENGER = "challenger"
# what a model needs to be served; listed so that MLflow does not import the
# model in a subprocess to guess them (slow, and fragile on executors)
PIP_REQUIREMENTS = ["torch", "numpy", "desomspark"]


# The user's MLFLOW_TRACKING_URI, read once: mlflow.set_tracking_uri() writes the
# variable itself, and a process that uses two lakes must not inherit the first one's store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class RegistryError(DesomsparkError, RuntimeError):
    """MLflow is unreachable or a model/version/alias is missing."""


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


def connect(lake: Lake, cfg: MlflowConfig = MlflowConfig()) -> str:
    """Point MLflow at the lake's store and make sure the experiment exists; returns its id."""
    import mlflow

    uri = tracking_uri(lake, cfg)
    embedded = uri == f"sqlite:///{lake.path('mlflow.db')}" if lake.is_local else False
    if embedded:
        reroot_embedded_store(lake)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
        if embedded:
            _home_default_experiment(lake)
        if experiment is not None:
            return experiment.experiment_id
        # a SQLite store keeps its artifacts in the lake, not in ./mlruns of whatever folder we run from
        location = _artifact_root(lake) if uri.startswith("sqlite:") and lake.is_local else None
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except Exception as exc:  # MLflow's client raises many kinds (HTTP, SQL, REST): one message for all
        raise RegistryError(f"MLflow at {uri} is not usable: {type(exc).__name__}: {str(exc)[:300]}") from exc


def _artifact_root(lake: Lake) -> str:
    return "file://" + lake.path("mlartifacts")


def _home_default_experiment(lake: Lake) -> None:
    """MLflow creates a ``Default`` experiment with the working directory's ``./mlruns`` as its
    location when it makes a store: in the lake's own store it lives in the lake like the rest."""
    import sqlite3

    with closing(sqlite3.connect(lake.path("mlflow.db"))) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0 AND "
                   "substr(artifact_location, 1, ?) != ?",
                   (_artifact_root(lake) + "/0", len(_artifact_root(lake)), _artifact_root(lake)))


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
    import sqlite3

    path = lake.path("mlflow.db")
    if not os.path.exists(path):
        return 0
    new_root = _artifact_root(lake)
    # closing(): sqlite3's own context manager commits but leaves the connection open
    with closing(sqlite3.connect(path)) as db, db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        roots = {loc for (loc,) in db.execute("SELECT artifact_location FROM experiments")
                 if loc and loc.startswith("file://") and loc.rstrip("/").endswith("/mlartifacts")}
        changed = 0
        for old_root in roots - {new_root}:
            for table in sorted(tables):
                for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if not str(kind).upper().startswith(("VARCHAR", "TEXT")):
                        continue
                    cursor = db.execute(
                        f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                        f'WHERE substr("{column}", 1, ?) = ?',
                        (new_root, len(old_root) + 1, len(old_root), old_root))
                    changed += cursor.rowcount
    return changed


@contextmanager
def run(lake: Lake, cfg: MlflowConfig, name: str, run_id: str | None = None):
    """An MLflow run in the lake's experiment (``run_id`` resumes one)."""
    import mlflow

    experiment_id = connect(lake, cfg)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=name) as r:
        yield r


def code_version() -> str:
    """The git commit of the checkout the package runs from (``+dirty`` with local changes), else its version."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"desomspark {version('desomspark')}"
        except PackageNotFoundError:
            return "unknown"


def night_span(nights: list[str]) -> str:
    """``20251120`` or ``20251120-21`` or ``20251120-20251203`` (for run names)."""
    nights = sorted(nights)
    if not nights:
        return "no nights"
    first, last = nights[0], nights[-1]
    if first == last:
        return first
    return f"{first}-{last[6:]}" if first[:6] == last[:6] else f"{first}-{last}"


@dataclass(frozen=True)
class TrainingData:
    """What a model is trained on, as MLflow records it (a dataset input of the run)."""

    name: str
    path: str
    nights: list[str]
    rows: int
    digest: str


def log_training_inputs(kind: str, settings, run_params: dict, data: TrainingData) -> None:
    """A training run's inputs, logged once: its settings (``kind.*``), what only the run knows, its data.

    The code's commit, the training nights and rows become run tags.
    """
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    mlflow.log_params(flatten(kind, asdict(settings)) | run_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local folder it is
        source = resolve_dataset_source(data.path)
    mlflow.log_input(MetaDataset(source, name=data.name, digest=data.digest[:36]), context="training",
                     tags={"nights": ",".join(sorted(data.nights)), "rows": str(data.rows)})
    mlflow.set_tags({"git_commit": code_version(), "training_nights": night_span(data.nights),
                     "training_rows": str(data.rows)})


def log_training_outcome(history: list[dict], metrics: dict | None = None, files: list[str | Path] = (),
                         dicts: dict[str, dict] | None = None) -> None:
    """A training run's results: metric curves (one step per logged iteration), final metrics, files, JSON."""
    import mlflow

    for row in history:
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "iteration"}, step=int(row["iteration"]))
    if metrics:
        mlflow.log_metrics(metrics)
    for path in files:
        mlflow.log_artifact(str(path))
    for name, value in (dicts or {}).items():
        mlflow.log_dict(value, name)


def flatten(prefix: str, values: dict) -> dict[str, str]:
    """Nested dict -> flat MLflow params (``desom1.gamma``...)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(name, value))
        else:
            out[name] = str(value)[:500]
    return out


def _register(model_uri: str, name: str, tags: dict[str, str] | None):
    """``mlflow.register_model``, its lines to stderr ("Successfully registered ...") kept for ``-v`` only."""
    import contextlib
    import io

    import mlflow

    said = io.StringIO()
    with contextlib.redirect_stderr(said):  # MLflow prints these, bypassing its logger
        version = mlflow.register_model(model_uri, name, tags=tags or {})
    for line in said.getvalue().splitlines():
        _LOG.debug(line)
    return version


def register_model(module, name: str, input_example, metadata: dict, tags: dict[str, str] | None = None,
                   extra: dict | None = None, description: str | None = None) -> str:
    """Log ``module`` in the active run, register it as ``name`` and point ``challenger`` at it.

    The module is saved in MLflow's ``pt2`` format (``torch.export``: a graph
    and tensors, no pickled code); ``metadata`` (map shape, DESOM-1 version...)
    goes into the MLmodel file and ``extra`` arrays (e.g. decoded prototypes)
    into ``extra.npz`` beside it; ``description`` is shown on the registered
    version.  The signature gives the inputs and every output (named as the
    module's ``output_names``, else ``output_0``...).  Returns the new version.
    """
    import tempfile

    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    import torch

    example = np.asarray(input_example)
    with torch.no_grad():
        outputs = module.cpu().eval()(torch.as_tensor(example))
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    names = list(getattr(module, "output_names", ())) or [f"output_{i}" for i in range(len(outputs))]
    # batch dimension -1: any batch size at inference
    signature = ModelSignature(
        inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(str(o.numpy().dtype)), (-1, *o.shape[1:]), name=n)
                        for n, o in zip(names, outputs)]))
    with tempfile.TemporaryDirectory() as tmp:
        extra_files = []
        if extra:
            path = f"{tmp}/extra.npz"
            np.savez_compressed(path, **extra)
            extra_files.append(path)
        info = mlflow.pytorch.log_model(module.cpu().eval(), name="model", input_example=input_example,
                                        serialization_format="pt2", signature=signature,
                                        pip_requirements=PIP_REQUIREMENTS,
                                        metadata=metadata, extra_files=extra_files or None)
    version = _register(info.model_uri, name, tags)
    client = MlflowClient()
    if description:
        client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def register_model_dir(path: str, name: str, tags: dict[str, str] | None = None) -> str:
    """Copy an MLflow model folder (e.g. a shipped default) into the active run and register it."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.log_artifacts(path, "model")
    version = _register(f"runs:/{mlflow.active_run().info.run_id}/model", name, tags)
    MlflowClient().set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def model_metadata(uri: str) -> dict:
    """The metadata written with a model (map shape, DESOM-1 version...)."""
    import mlflow
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/MLmodel")
    return dict(Model.load(local).metadata or {})


def model_extra(uri: str) -> dict:
    """The extra arrays saved with a model (decoded prototypes...), as numpy."""
    import mlflow
    import numpy as np

    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/extra_files/extra.npz")
    except Exception:  # a model registered without extra arrays (MLflow raises its own kinds): none
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def promote(lake: Lake, cfg: MlflowConfig, name: str, version: str) -> str:
    """Move alias ``champion`` of model ``name`` to ``version`` (``challenger``: the version that alias
    names); returns the version promoted."""
    from mlflow import MlflowClient

    connect(lake, cfg)
    client = MlflowClient()
    try:
        if version == CHALLENGER:  # the version the last training registered
            version = client.get_model_version_by_alias(name, CHALLENGER).version
        client.get_model_version(name, str(version))
    except Exception as exc:  # MLflow's "not found" comes as several kinds: one message for all
        raise RegistryError(f"model {name} has no version {version}") from exc
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return str(version)


def resolve(uri: str) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, version)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if not uri.startswith("models:/"):
        raise RegistryError(f"expected a models:/ URI, not {uri!r}")
    rest = uri[len("models:/"):]
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, version = rest.split("/", 1)
        return name, str(client.get_model_version(name, version).version)
    except Exception as exc:  # MLflow's "not found" comes as several kinds: one message for all
        raise RegistryError(f"{uri}: no such model version ({type(exc).__name__})") from exc


def download_uri(name: str, version: str) -> str:
    """Where a model version's files are: workers load from there without the tracking server."""
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_download_uri(name, str(version))


def load_model(uri: str, device: str = "cpu"):
    """A registered model through MLflow's own loader."""
    import mlflow

    return mlflow.pytorch.load_model(uri, map_location=device)


# --- models as the stages use them ------------------------------------------

class ModelMismatch(DesomsparkError, ValueError):
    """Histo-vectors and DESOM-2 come from different DESOM-1 versions."""


def check_desom1(metadata: dict, version: str) -> None:
    """Refuse histo-vectors made by another DESOM-1 than the one DESOM-2 was trained on."""
    trained_on = str(metadata.get("desom1_version"))
    if str(version) != trained_on:
        raise ModelMismatch(f"DESOM-2 was trained on histo-vectors of desom1 version {trained_on}, "
                            f"these come from version {version}: recompute them or train DESOM-2 again")


_MODELS: dict = {}  # (uri, device) -> the loaded module: one per Python worker and URI


def worker_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cached_model(uri: str, device: str | None = None, threads: int | None = None):
    """The registered inference module at ``uri``, loaded once per process (MLflow's pt2 loader)."""
    import torch

    device = device or worker_device()
    key = (uri, device)
    if key not in _MODELS:
        import mlflow

        if threads and device == "cpu":
            torch.set_num_threads(threads)
        _MODELS[key] = mlflow.pytorch.load_model(uri).to(device)
    return _MODELS[key]


DEFAULT_URIS = {"desom1": "models:/desom1@champion", "desom2": "models:/desom2@champion"}


def models_dir() -> Path:
    """The shipped default models: the checkout's ``models/``, else the installed copy."""
    for candidate in (Path(__file__).resolve().parents[1] / "models", Path(sys.prefix) / "share" / "desomspark" / "models"):
        if (candidate / "desom1" / "MLmodel").exists():
            return candidate
    raise FileNotFoundError("the default models (models/desom1, models/desom2) are not installed")


def bootstrap_defaults(lake: Lake, cfg: Config) -> None:
    """Register the shipped DESOM-1 and DESOM-2 as champions of an empty registry."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    have = {m.name for m in client.search_registered_models()}
    if {"desom1", "desom2"} & have:
        return
    root = models_dir()
    with run(lake, cfg.mlflow, "default-desom1"):
        mlflow.set_tag("source", str(root / "desom1"))
        v1 = register_model_dir(str(root / "desom1"), "desom1", tags={"default": "true"})
    with tempfile.TemporaryDirectory() as tmp:
        # the shipped pair belongs together: DESOM-2 names this lake's version of the shipped DESOM-1
        d2 = Path(tmp) / "desom2"
        shutil.copytree(root / "desom2", d2)
        mlmodel = yaml.safe_load((d2 / "MLmodel").read_text())
        mlmodel.setdefault("metadata", {})["desom1_version"] = v1
        (d2 / "MLmodel").write_text(yaml.safe_dump(mlmodel))
        with run(lake, cfg.mlflow, "default-desom2"):
            mlflow.set_tag("source", str(root / "desom2"))
            v2 = register_model_dir(str(d2), "desom2", tags={"default": "true", "desom1_version": v1})
    client.set_registered_model_alias("desom1", CHAMPION, v1)
    client.set_registered_model_alias("desom2", CHAMPION, v2)
    _LOG.info(f"registry: no models yet; registered the default models as desom1 v{v1} and desom2 v{v2} (champion)")


def resolve_model(lake: Lake, cfg: Config, name: str, uri: str | None = None) -> tuple[str, str]:
    """(artifact URI a worker can load without the tracking server, version) of a model."""
    connect(lake, cfg.mlflow)
    uri = uri or DEFAULT_URIS[name]
    if uri == DEFAULT_URIS[name]:
        bootstrap_defaults(lake, cfg)
    model_name, version = resolve(uri)
    if model_name != name:
        raise UserError(f"{uri} is a {model_name} model, not {name}")
    return download_uri(name, version), version


def n_nodes(metadata: dict) -> int:
    from .model import ModelSpec

    return ModelSpec.from_dict(metadata).n_nodes


def champion_metadata(lake: Lake, cfg, name: str) -> tuple[str, str, dict]:
    """(artifact URI, version, metadata) of a model's champion (the defaults on a fresh lake)."""
    uri, version = resolve_model(lake, cfg, name)
    return uri, version, model_metadata(uri)
