"""The stages after ingest, wired to the registry: histo-vectors, assignment, and the nightly job.

Models are named by MLflow URI (default ``models:/desom1@champion`` and
``models:/desom2@champion``).  A lake whose registry has no champion yet
gets the default models shipped in ``models/`` (trained on the simulated
survey, see ``models/MODEL_CARD.md``), registered as its first versions, so
that a fresh install assigns exposures before anyone trains anything.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from . import registry
from .assign import write_assignments
from .config import Config
from .desom2 import ModelMismatch
from .histovector import write_histovectors
from .lake import Lake

DEFAULT_URIS = {"desom1": "models:/desom1@champion", "desom2": "models:/desom2@champion"}


def models_dir() -> Path:
    """The shipped default models: the checkout's ``models/``, else the installed copy."""
    for candidate in (Path(__file__).resolve().parents[1] / "models", Path(sys.prefix) / "share" / "desomspark" / "models"):
        if (candidate / "desom1" / "MLmodel").exists():
            return candidate
    raise FileNotFoundError("the default models (models/desom1, models/desom2) are not installed")


def bootstrap_defaults(lake: Lake, cfg: Config, log=print) -> None:
    """Register the shipped DESOM-1 and DESOM-2 as champions of an empty registry."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    have = {m.name for m in client.search_registered_models()}
    if {"desom1", "desom2"} & have:
        return
    root = models_dir()
    with registry.run(lake, cfg.mlflow, "default-desom1"):
        mlflow.set_tag("source", str(root / "desom1"))
        v1 = registry.register_model_dir(str(root / "desom1"), "desom1", tags={"default": "true"})
    with tempfile.TemporaryDirectory() as tmp:
        # the shipped pair belongs together: DESOM-2 names this lake's version of the shipped DESOM-1
        d2 = Path(tmp) / "desom2"
        shutil.copytree(root / "desom2", d2)
        mlmodel = yaml.safe_load((d2 / "MLmodel").read_text())
        mlmodel.setdefault("metadata", {})["desom1_version"] = v1
        (d2 / "MLmodel").write_text(yaml.safe_dump(mlmodel))
        with registry.run(lake, cfg.mlflow, "default-desom2"):
            mlflow.set_tag("source", str(root / "desom2"))
            v2 = registry.register_model_dir(str(d2), "desom2", tags={"default": "true", "desom1_version": v1})
    client.set_registered_model_alias("desom1", registry.CHAMPION, v1)
    client.set_registered_model_alias("desom2", registry.CHAMPION, v2)
    log(f"registry: no models yet; registered the default models as desom1 v{v1} and desom2 v{v2} (champion)")


def resolve_model(lake: Lake, cfg: Config, name: str, uri: str | None = None, log=print) -> tuple[str, str]:
    """(artifact URI a worker can load without the tracking server, version) of a model."""
    registry.connect(lake, cfg.mlflow)
    uri = uri or DEFAULT_URIS[name]
    if uri == DEFAULT_URIS[name]:
        bootstrap_defaults(lake, cfg, log)
    model_name, version = registry.resolve(uri)
    if model_name != name:
        raise ValueError(f"{uri} is a {model_name} model, not {name}")
    return registry.download_uri(name, version), version


def n_nodes(metadata: dict) -> int:
    rows, cols = metadata["map_shape"]
    return int(rows) * int(cols)


def run_histovectors(spark, lake: Lake, cfg: Config, desom1_uri: str | None = None,
                     nights: list[str] | None = None, log=print) -> str:
    uri, version = resolve_model(lake, cfg, "desom1", desom1_uri, log)
    write_histovectors(spark, lake, uri, version, n_nodes(registry.model_metadata(uri)), nights, log)
    return version


def run_assign(spark, lake: Lake, cfg: Config, desom2_uri: str | None = None,
               nights: list[str] | None = None, log=print) -> pd.DataFrame:
    uri, version = resolve_model(lake, cfg, "desom2", desom2_uri, log)
    return write_assignments(spark, lake, uri, registry.model_metadata(uri), version, nights, log)


@dataclass
class NightlySummary:
    night: str
    exposures: int
    rejected_files: int
    labels: dict[str, int]
    most_novel: list[tuple[str, float, int, int]]

    def lines(self) -> list[str]:
        out = [f"nightly {self.night}: {self.exposures} exposures assigned, {self.rejected_files} files rejected"]
        out.append("  by label: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.labels.items())))
        out.append("  most novel (far from every prototype):")
        out += [f"    {e}  distance {d:.3f}  cell ({x},{y})" for e, d, x, y in self.most_novel]
        return out


def nightly(spark, input_spec: str, lake: Lake, night: str, cfg: Config, log=print,
            camera: str | None = None) -> NightlySummary:
    """One night: ingest -> histo-vectors -> assign with the champion models; touches only that night."""
    from .ingest import ingest

    d1_uri, d1_version = resolve_model(lake, cfg, "desom1", log=log)
    d2_uri, d2_version = resolve_model(lake, cfg, "desom2", log=log)
    d2_meta = registry.model_metadata(d2_uri)
    if str(d2_meta["desom1_version"]) != d1_version:
        raise ModelMismatch(f"champion desom2 v{d2_version} was trained on desom1 v{d2_meta['desom1_version']}, "
                            f"but the champion desom1 is v{d1_version}: promote a matching pair")
    summary = ingest(spark, input_spec, lake, night=night, cfg=cfg.ingest, log=log, camera=camera)
    if summary.ok + summary.partial == 0:
        raise ValueError(f"nightly {night}: no usable exposure (see rejects/)")
    write_histovectors(spark, lake, d1_uri, d1_version, n_nodes(registry.model_metadata(d1_uri)), [night], log)
    table = write_assignments(spark, lake, d2_uri, d2_meta, d2_version, [night], log)
    labels = table["label"].fillna("(unlabelled)").value_counts().to_dict()
    novel = table.sort_values("distance", ascending=False).head(5)
    result = NightlySummary(night=night, exposures=len(table), rejected_files=summary.rejected,
                            labels={str(k): int(v) for k, v in labels.items()},
                            most_novel=[(r.exposure_id, float(r.distance), int(r.cell_x), int(r.cell_y))
                                        for r in novel.itertuples()])
    for line in result.lines():
        log(line)
    return result
