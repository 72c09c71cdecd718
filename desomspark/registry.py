"""MLflow: where runs are tracked and models registered.

Embedded default: tracking and registry in ``sqlite:///<lake>/mlflow.db``,
artifacts under ``<lake>/mlartifacts``.  ``MLFLOW_TRACKING_URI`` in the
environment (an MLflow server on a cluster) wins, then ``mlflow.tracking_uri``
of the configuration.

Models are registered as ``desom1`` and ``desom2``; a new version gets alias
``challenger``, and ``promote`` moves ``champion``, which the nightly job uses.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from .config import MlflowConfig
from .lake import Lake

CHAMPION = "champion"
CHALLENGER = "challenger"
# what a model needs to be served; listed so that MLflow does not import the
# model in a subprocess to guess them (slow, and fragile on executors)
PIP_REQUIREMENTS = ["torch", "numpy", "desomspark"]


# The user's MLFLOW_TRACKING_URI, read once: mlflow.set_tracking_uri() writes the
# variable itself, and a process that uses two lakes must not inherit the first one's store.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class RegistryError(RuntimeError):
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
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = lake.path("mlartifacts") if uri.startswith("sqlite:") else None
        location = ("file://" + artifacts) if artifacts and lake.is_local else artifacts
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except Exception as exc:
        raise RegistryError(f"MLflow at {uri} is not usable: {type(exc).__name__}: {str(exc)[:300]}") from exc


@contextmanager
def run(lake: Lake, cfg: MlflowConfig, name: str, run_id: str | None = None):
    """An MLflow run in the lake's experiment (``run_id`` resumes one)."""
    import mlflow

    experiment_id = connect(lake, cfg)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=name) as r:
        yield r


def log_history(history: list[dict]) -> None:
    """Metric curves: one MLflow step per logged iteration."""
    import mlflow

    for row in history:
        step = int(row["iteration"])
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "iteration"}, step=step)


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


def register_model(module, name: str, input_example, metadata: dict, tags: dict[str, str] | None = None,
                   extra: dict | None = None) -> str:
    """Log ``module`` in the active run, register it as ``name`` and point ``challenger`` at it.

    The module is saved in MLflow's ``pt2`` format (``torch.export``: a graph
    and tensors, no pickled code); ``metadata`` (map shape, DESOM-1 version...)
    goes into the MLmodel file and ``extra`` arrays (e.g. decoded prototypes)
    into ``extra.npz`` beside it.  Returns the new version.
    """
    import tempfile

    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = np.asarray(input_example)
    # batch dimension -1: any batch size at inference
    signature = ModelSignature(inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]))
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
    version = mlflow.register_model(info.model_uri, name, tags=tags or {})
    MlflowClient().set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def register_model_dir(path: str, name: str, tags: dict[str, str] | None = None) -> str:
    """Copy an MLflow model folder (e.g. a shipped default) into the active run and register it."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.log_artifacts(path, "model")
    version = mlflow.register_model(f"runs:/{mlflow.active_run().info.run_id}/model", name, tags=tags or {})
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
    except Exception:
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def promote(lake: Lake, cfg: MlflowConfig, name: str, version: str) -> None:
    """Move alias ``champion`` of model ``name`` to ``version``."""
    from mlflow import MlflowClient

    connect(lake, cfg)
    client = MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except Exception as exc:
        raise RegistryError(f"model {name} has no version {version}") from exc
    client.set_registered_model_alias(name, CHAMPION, str(version))


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
    except Exception as exc:
        raise RegistryError(f"{uri}: no such model version ({type(exc).__name__})") from exc


def download_uri(name: str, version: str) -> str:
    """Where a model version's files are: workers load from there without the tracking server."""
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_download_uri(name, str(version))


def load_model(uri: str, device: str = "cpu"):
    """A registered model through MLflow's own loader."""
    import mlflow

    return mlflow.pytorch.load_model(uri, map_location=device)
