"""Everything MLflow: where the store is, runs and registration, model records, champions, the worker cache.

=============  ==========================================================
``store``      the tracking URI; the lake's embedded SQLite store
``tracking``   connect, training runs (inputs, outcome), registration
``record``     :class:`RegisteredModel`: one typed record per model version
``champions``  promote, resolve a champion (shipped defaults on a fresh lake),
               the checked :class:`Champions` pair
``cache``      served models loaded once per worker
=============  ==========================================================

The names below are the registry's public face: ``registry.registered(...)``.
MLflow itself is imported inside the functions that talk to it, so that an
executor or a GPU host that only maps cutouts does not pay its import.
"""

from desomspark.registry.cache import cached_model, worker_device
from desomspark.registry.champions import (
    CHAMPION,
    DEFAULT_URIS,
    Champions,
    ModelMismatch,
    bootstrap_defaults,
    check_desom1,
    load_model,
    models_dir,
    promote,
    registered,
    resolve,
)
from desomspark.registry.record import RegisteredModel, download_uri, model_extra, model_metadata
from desomspark.registry.store import RegistryError, reroot_embedded_store, tracking_uri
from desomspark.registry.tracking import (
    CHALLENGER,
    PIP_REQUIREMENTS,
    TrainingData,
    code_version,
    connect,
    flatten,
    log_training_inputs,
    log_training_outcome,
    night_span,
    register_model,
    register_model_dir,
    run,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_URIS",
    "PIP_REQUIREMENTS",
    "Champions",
    "ModelMismatch",
    "RegisteredModel",
    "RegistryError",
    "TrainingData",
    "bootstrap_defaults",
    "cached_model",
    "check_desom1",
    "code_version",
    "connect",
    "download_uri",
    "flatten",
    "load_model",
    "log_training_inputs",
    "log_training_outcome",
    "model_extra",
    "model_metadata",
    "models_dir",
    "night_span",
    "promote",
    "register_model",
    "register_model_dir",
    "registered",
    "reroot_embedded_store",
    "resolve",
    "run",
    "tracking_uri",
    "worker_device",
]
