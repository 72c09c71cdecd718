"""Champions: which model versions the nightly job uses, and the shipped defaults of a fresh lake.

``promote`` moves alias ``champion``; :func:`champion` resolves it (registering
the small default models of ``models/`` on an empty registry, so that a
fresh install assigns exposures before anyone trains); :class:`Champions` is
the pair, checked to belong together.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from desomspark.config import Config, MlflowConfig
from desomspark.errors import DesomsparkError, UserError
from desomspark.lake.layout import Lake
from desomspark.registry.record import RegisteredModel
from desomspark.registry.store import RegistryError, is_embedded, parse_model_uri, read_embedded_version
from desomspark.registry.tracking import CHALLENGER, connect, register_model_dir, run

_LOG = logging.getLogger(__name__)

CHAMPION = "champion"


def promote(lake: Lake, cfg: MlflowConfig, name: str, version: str) -> str:
    """Move alias ``champion`` of model ``name`` to ``version`` (``challenger``: the version that alias
    names); returns the version promoted.
    """
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

    parsed = parse_model_uri(uri)
    if parsed is None:
        raise RegistryError(f"expected models:/NAME@ALIAS or models:/NAME/VERSION, not {uri!r}")
    name, alias, version = parsed
    client = MlflowClient()
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
        return name, str(found.version)
    except Exception as exc:  # MLflow's "not found" comes as several kinds: one message for all
        raise RegistryError(f"{uri}: no such model version ({type(exc).__name__})") from exc


def load_model(uri: str, device: str = "cpu"):
    """A registered model through MLflow's own loader."""
    import mlflow

    return mlflow.pytorch.load_model(uri, map_location=device)


class ModelMismatch(DesomsparkError, ValueError):
    """Histo-vectors and DESOM-2 come from different DESOM-1 versions."""


def check_desom1(desom2: RegisteredModel, version: str) -> None:
    """Refuse histo-vectors made by another DESOM-1 than the one DESOM-2 was trained on."""
    trained_on = desom2.desom1_version
    if str(version) != trained_on:
        raise ModelMismatch(
            f"DESOM-2 was trained on histo-vectors of desom1 version {trained_on}, "
            f"these come from version {version}: recompute them or train DESOM-2 again"
        )


DEFAULT_URIS = {"desom1": "models:/desom1@champion", "desom2": "models:/desom2@champion"}


def models_dir() -> Path:
    """The shipped default models: the checkout's ``models/``, else the installed copy."""
    for candidate in (
        Path(__file__).resolve().parents[2] / "models",
        Path(sys.prefix) / "share" / "desomspark" / "models",
    ):
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
    _LOG.info(
        f"registry: no models yet; registered the default models as desom1 v{v1} and desom2 v{v2} (champion)"
    )


def registered(lake: Lake, cfg: Config, name: str, uri: str | None = None) -> RegisteredModel:
    """The model at ``uri`` (default: ``name``'s champion; the shipped defaults on a fresh lake)."""
    uri = uri or DEFAULT_URIS[name]
    if is_embedded(lake, cfg.mlflow) and (found := read_embedded_version(lake, name, uri)):
        return RegisteredModel.from_version(name, found)
    connect(lake, cfg.mlflow)
    if uri == DEFAULT_URIS[name]:
        bootstrap_defaults(lake, cfg)
    model_name, version = resolve(uri)
    if model_name != name:
        raise UserError(f"{uri} is a {model_name} model, not {name}")
    return RegisteredModel.load(name, version)


@dataclass(frozen=True)
class Champions:
    """The champion pair, checked to belong together (DESOM-2 trained on DESOM-1's histo-vectors)."""

    desom1: RegisteredModel
    desom2: RegisteredModel

    @classmethod
    def of(cls, lake: Lake, cfg: Config) -> "Champions":
        d1, d2 = registered(lake, cfg, "desom1"), registered(lake, cfg, "desom2")
        if d2.desom1_version != d1.version:
            raise ModelMismatch(
                f"champion desom2 v{d2.version} was trained on desom1 v{d2.desom1_version}, "
                f"but the champion desom1 is v{d1.version}: promote a matching pair"
            )
        return cls(d1, d2)
