"""A registered model as the stages use it: one typed record, read once from MLflow.

:class:`RegisteredModel` is what the registry hands out (like hats'
``TableProperties``): name, version, the artifact URI a worker loads
from without the tracking server, the run that made it, its
:class:`~desomspark.desom.spec.ModelSpec` and the metadata the mapper
needs (transform, quality inputs, node smoothing, DESOM-1 version).  No
reader parses MLflow metadata itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

from desomspark.desom.spec import ModelSpec
from desomspark.registry.store import RegistryError, unreachable


@dataclass(frozen=True)
class RegisteredModel:
    """One version of ``desom1`` or ``desom2`` in the registry."""

    name: str
    version: str
    uri: str  # artifact location: workers load from here
    spec: ModelSpec
    run_id: str | None = None
    metadata: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_metadata(
        cls, name: str, version: str, uri: str, metadata: dict, run_id: str | None = None
    ) -> "RegisteredModel":
        """The record of a model whose MLmodel metadata is ``metadata`` (the one place it is parsed)."""
        return cls(name, str(version), uri, ModelSpec.from_dict(metadata), run_id, dict(metadata))

    @classmethod
    def from_version(cls, name: str, found: tuple[str, str | None, str]) -> "RegisteredModel":
        """The record of ``(version, run id, download URI)`` as the lake's store names them."""
        version, run_id, uri = found
        return cls.from_metadata(name, version, uri, model_metadata(uri), run_id)

    @classmethod
    def load(cls, name: str, version: str) -> "RegisteredModel":
        """Read version ``version`` of model ``name`` from the registry MLflow points at."""
        from mlflow import MlflowClient

        try:
            mv = MlflowClient().get_model_version(name, str(version))
        except Exception as exc:  # MLflow's "not found" comes as several kinds: one message for all
            raise RegistryError(f"model {name} has no version {version}") from exc
        uri = download_uri(name, version)
        return cls.from_metadata(name, str(mv.version), uri, model_metadata(uri), mv.run_id)

    # what the stages ask of a model
    @property
    def map_shape(self) -> tuple[int, int]:
        return self.spec.map_shape

    @property
    def n_nodes(self) -> int:
        return self.spec.n_nodes

    @property
    def desom1_version(self) -> str | None:
        """DESOM-2: the DESOM-1 version whose histo-vectors it reads."""
        v = self.metadata.get("desom1_version", self.spec.desom1_version)
        return None if v is None else str(v)

    @property
    def transform(self) -> str | None:
        return self.metadata.get("transform", self.spec.transform)

    @property
    def novelty_quantile(self) -> float | None:
        """DESOM-2: its distance is over each cell's own scale, this quantile of the cell's training
        distances (1: as far as the cell's far members); None for maps trained before, whose
        distance is in latent units."""
        q = self.metadata.get("novelty_quantile")
        return None if q is None else float(q)

    @property
    def qa_inputs(self) -> tuple[str, ...]:
        """DESOM-2: the quality numbers it reads after the histo-vector (empty for the oldest models)."""
        return tuple(self.metadata.get("qa_inputs") or ())

    @property
    def qa_weight(self) -> float | None:
        w = self.metadata.get("qa_weight")
        return None if w is None else float(w)

    @property
    def node_smoothing(self) -> float:
        return float(self.metadata.get("node_smoothing") or 0.0)

    def extra(self) -> dict:
        """The arrays saved beside the model (decoded prototypes...)."""
        return model_extra(self.uri)


def model_metadata(uri: str) -> dict:
    """The metadata written with a model (map shape, DESOM-1 version...)."""
    if uri.startswith("file://"):  # a local model: its MLmodel file is YAML, read without MLflow
        import yaml

        with open(os.path.join(urlparse(uri).path, "MLmodel")) as f:
            return dict((yaml.safe_load(f) or {}).get("metadata") or {})
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
    except Exception as exc:  # a model registered without extra arrays (MLflow raises its own kinds): none
        if unreachable(exc):  # ... unless the server is away: that is not "no arrays"
            raise RegistryError(f"MLflow unreachable: {exc}") from exc
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def download_uri(name: str, version: str) -> str:
    """Where a model version's files are: workers load from there without the tracking server."""
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_download_uri(name, str(version))
