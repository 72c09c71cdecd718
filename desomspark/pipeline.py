"""The stages after ingest, wired to the registry: histo-vectors, assignment, and the nightly job.

Models are named by MLflow URI (default ``models:/desom1@champion`` and
``models:/desom2@champion``).  A lake whose registry has no champion yet
gets the default models shipped in ``models/`` (trained on the simulated
survey, see ``models/MODEL_CARD.md``), registered as its first versions, so
that a fresh install assigns exposures before anyone trains anything.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from . import registry
from .assign import write_assignments
from .config import Config
from .errors import UserError
from .histovector import write_histovectors
from .lake import Batch, Lake
from .registry import ModelMismatch

_LOG = logging.getLogger(__name__)


def run_histovectors(spark, lake: Lake, cfg: Config, desom1_uri: str | None = None,
                     nights: list[str] | None = None) -> str:
    uri, version = registry.resolve_model(lake, cfg, "desom1", desom1_uri)
    write_histovectors(spark, lake, uri, version, registry.n_nodes(registry.model_metadata(uri)), nights)
    return version


def run_assign(spark, lake: Lake, cfg: Config, desom2_uri: str | None = None,
               nights: list[str] | None = None) -> pd.DataFrame:
    uri, version = registry.resolve_model(lake, cfg, "desom2", desom2_uri)
    return write_assignments(spark, lake, uri, registry.model_metadata(uri), version, nights)


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


@dataclass(frozen=True)
class Champions:
    """The champion pair, checked to belong together (DESOM-2 trained on DESOM-1's histo-vectors)."""

    d1_uri: str
    d1_version: str
    d2_uri: str
    d2_version: str
    d2_meta: dict

    @classmethod
    def of(cls, lake: Lake, cfg: Config) -> "Champions":
        d1_uri, d1_version = registry.resolve_model(lake, cfg, "desom1")
        d2_uri, d2_version = registry.resolve_model(lake, cfg, "desom2")
        d2_meta = registry.model_metadata(d2_uri)
        if str(d2_meta["desom1_version"]) != d1_version:
            raise ModelMismatch(f"champion desom2 v{d2_version} was trained on desom1 v{d2_meta['desom1_version']}, "
                                f"but the champion desom1 is v{d1_version}: promote a matching pair")
        return cls(d1_uri, d1_version, d2_uri, d2_version, d2_meta)

    def map_exposures(self, spark, lake: Lake, nights: list[str], batch: Batch | None = None) -> pd.DataFrame:
        """Histo-vectors then cells for ``nights`` (or only a batch's exposures); returns the assignments."""
        write_histovectors(spark, lake, self.d1_uri, self.d1_version,
                           registry.n_nodes(registry.model_metadata(self.d1_uri)), nights, batch)
        return write_assignments(spark, lake, self.d2_uri, self.d2_meta, self.d2_version, nights, batch)


def nightly(spark, input_spec: str, lake: Lake, night: str, cfg: Config,
            camera: str | None = None) -> NightlySummary:
    """One night: ingest -> histo-vectors -> assign with the champion models; touches only that night."""
    from .ingest import ingest

    champions = Champions.of(lake, cfg)
    summary = ingest(spark, input_spec, lake, night=night, cfg=cfg.ingest, camera=camera)
    if summary.ok + summary.partial == 0:
        raise UserError(f"nightly {night}: no usable exposure (see rejects/)")
    table = champions.map_exposures(spark, lake, [night])
    labels = table["label"].fillna("(unlabelled)").value_counts().to_dict()
    novel = table.sort_values("distance", ascending=False).head(5)
    result = NightlySummary(night=night, exposures=len(table), rejected_files=summary.rejected,
                            labels={str(k): int(v) for k, v in labels.items()},
                            most_novel=[(r.exposure_id, float(r.distance), int(r.cell_x), int(r.cell_y))
                                        for r in novel.itertuples()])
    for line in result.lines():
        _LOG.info(line)
    return result
