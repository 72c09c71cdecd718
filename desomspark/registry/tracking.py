"""MLflow runs: connecting, logging a training run's inputs and outcome, registering its model.

Models are registered as ``desom1`` and ``desom2``; a new version gets alias
``challenger`` (``champions.promote`` moves ``champion``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from desomspark.config import MlflowConfig
from desomspark.lake.layout import Lake
from desomspark.registry.store import (
    RegistryError,
    _artifact_root,
    _home_default_experiment,
    reroot_embedded_store,
    tracking_uri,
)

_LOG = logging.getLogger(__name__)

CHALLENGER = "challenger"
# what a model needs to be served; listed so that MLflow does not import the
# model in a subprocess to guess them (slow, and fragile on executors)
PIP_REQUIREMENTS = ["torch", "numpy", "desomspark"]


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


@contextmanager
def run(lake: Lake, cfg: MlflowConfig, name: str, run_id: str | None = None):
    """An MLflow run in the lake's experiment (``run_id`` resumes one)."""
    import mlflow

    experiment_id = connect(lake, cfg)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=name) as r:
        yield r


def code_version() -> str:
    """The git commit of the checkout the package runs from (``+dirty`` with local changes), else its
    version."""
    root = Path(__file__).resolve().parents[2]  # the checkout: desomspark/registry/ is two down
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
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
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    mlflow.log_params(flatten(kind, asdict(settings)) | run_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local folder it is
        source = resolve_dataset_source(data.path)
    mlflow.log_input(
        MetaDataset(source, name=data.name, digest=data.digest[:36]),
        context="training",
        tags={"nights": ",".join(sorted(data.nights)), "rows": str(data.rows)},
    )
    mlflow.set_tags(
        {
            "git_commit": code_version(),
            "training_nights": night_span(data.nights),
            "training_rows": str(data.rows),
        }
    )


def log_training_outcome(
    history: list[dict],
    metrics: dict | None = None,
    files: list[str | Path] = (),
    dicts: dict[str, dict] | None = None,
) -> None:
    """A training run's results: metric curves (one step per logged iteration), final metrics, files, JSON."""
    import mlflow

    for row in history:
        mlflow.log_metrics(
            {k: float(v) for k, v in row.items() if k != "iteration"}, step=int(row["iteration"])
        )
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
    import mlflow

    said = io.StringIO()
    with contextlib.redirect_stderr(said):  # MLflow prints these, bypassing its logger
        version = mlflow.register_model(model_uri, name, tags=tags or {})
    for line in said.getvalue().splitlines():
        _LOG.debug(line)
    return version


def register_model(
    module,
    name: str,
    input_example,
    metadata: dict,
    tags: dict[str, str] | None = None,
    extra: dict | None = None,
    description: str | None = None,
) -> str:
    """Log ``module`` in the active run, register it as ``name`` and point ``challenger`` at it.

    The module is saved in MLflow's ``pt2`` format (``torch.export``: a graph
    and tensors, no pickled code); ``metadata`` (map shape, DESOM-1 version...)
    goes into the MLmodel file and ``extra`` arrays (e.g. decoded prototypes)
    into ``extra.npz`` beside it; ``description`` is shown on the registered
    version.  The signature gives the inputs and every output (named as the
    module's ``output_names``, else ``output_0``...).  Returns the new version.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = np.asarray(input_example)
    with torch.no_grad():
        outputs = module.cpu().eval()(torch.as_tensor(example))
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    names = list(getattr(module, "output_names", ())) or [f"output_{i}" for i in range(len(outputs))]
    # batch dimension -1: any batch size at inference
    signature = ModelSignature(
        inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(str(o.numpy().dtype)), (-1, *o.shape[1:]), name=n)
                for n, o in zip(names, outputs)
            ]
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        extra_files = []
        if extra:
            path = f"{tmp}/extra.npz"
            np.savez_compressed(path, **extra)
            extra_files.append(path)
        info = mlflow.pytorch.log_model(
            module.cpu().eval(),
            name="model",
            input_example=input_example,
            serialization_format="pt2",
            signature=signature,
            pip_requirements=PIP_REQUIREMENTS,
            metadata=metadata,
            extra_files=extra_files or None,
        )
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
