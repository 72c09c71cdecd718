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

import numpy as np
import pandas as pd

from desomspark import registry
from desomspark.config import Config
from desomspark.errors import UserError
from desomspark.lake.layout import Batch, Lake
from desomspark.registry import Champions
from desomspark.stages.assign import write_assignments
from desomspark.stages.histovectors import write_histovectors
from desomspark.stages.ingest import IngestSummary, ingest
from desomspark.stages.verdicts import decide_nights

_LOG = logging.getLogger(__name__)


def run_histovectors(
    spark, lake: Lake, cfg: Config, desom1_uri: str | None = None, nights: list[str] | None = None
) -> str:
    """Histo-vectors of ``nights`` (default: all) with DESOM-1 at ``desom1_uri`` (default: champion)."""
    desom1 = registry.registered(lake, cfg, "desom1", desom1_uri)
    write_histovectors(spark, lake, desom1, nights)
    return desom1.version


def run_assign(
    spark, lake: Lake, cfg: Config, desom2_uri: str | None = None, nights: list[str] | None = None
) -> pd.DataFrame:
    """Cells of ``nights`` (default: all) with DESOM-2 at ``desom2_uri`` (default: champion), then
    the verdicts of the nights it could map."""
    desom2 = registry.registered(lake, cfg, "desom2", desom2_uri)
    table = write_assignments(spark, lake, desom2, nights)
    decide_nights(lake, cfg, sorted(set(table["night"])), desom2=desom2)
    return table


def map_exposures(
    spark, lake: Lake, champions: Champions, nights: list[str], batch: Batch | None = None
) -> pd.DataFrame:
    """Histo-vectors then cells for ``nights`` (or only a batch's exposures); returns the assignments."""
    write_histovectors(spark, lake, champions.desom1, nights, batch)
    return write_assignments(spark, lake, champions.desom2, nights, batch)


@dataclass
class NightlySummary:
    night: str
    exposures: int
    ingest: IngestSummary
    labels: dict[str, int]
    decisions: dict[str, int]
    most_novel: list[tuple[str, float, int, int]]
    #: (quantile, distance): the night's own distance at ``watch.novelty_quantile``, to judge by
    novelty_reference: tuple[float, float] = (0.99, float("nan"))
    lake: str = "LAKE"

    def lines(self) -> list[str]:
        """What the night gave, every input file accounted for, and what to run next."""
        i = self.ingest
        out = [
            f"nightly {self.night}: {self.exposures} exposures assigned, {i.rejected} files rejected, "
            f"{len(i.no_cutouts)} with no cutout, of {i.files} files"
        ]
        # (the ingest step has listed the rejected files by name with their reason, and the
        # exposures without a cutout, just before: every one is also a row of rejects/)
        out.append("  by label: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.labels.items())))
        out.append(
            "  verdicts: "
            + ", ".join(f"{self.decisions.get(d, 0)} {d}" for d in ("accept", "review", "retake"))
            + f" (desomspark verdicts --night {self.night} writes the feed)"
        )
        q, ref = self.novelty_reference
        out.append(
            f"  most novel (latent distance to the cell's prototype; "
            f"the night's {q:.0%} quantile is {ref:.3f}):"
        )
        out += [
            f"    {e}  distance {d:.3f} ({d / ref:.1f}x that quantile)  cell ({x},{y})"
            for e, d, x, y in self.most_novel
        ]
        out.append(f"  next: desomspark serve --lake {self.lake} to look at the map and label it")
        return out


def nightly(
    spark, input_spec: str, lake: Lake, night: str, cfg: Config, camera: str | None = None
) -> NightlySummary:
    """One night: ingest -> histo-vectors -> assign with the champion models; touches only that night."""
    champions = Champions.of(lake, cfg)
    summary = ingest(spark, input_spec, lake, night=night, cfg=cfg.ingest, camera=camera)
    if summary.ok + summary.partial == 0:
        raise UserError(f"nightly {night}: no usable exposure (see rejects/)")
    table = map_exposures(spark, lake, champions, [night])
    verdicts = decide_nights(lake, cfg, [night], desom2=champions.desom2)
    labels = table["label"].fillna("(unlabelled)").value_counts().to_dict()
    novel = table.sort_values("distance", ascending=False).head(5)
    quantile = cfg.watch.novelty_quantile
    result = NightlySummary(
        night=night,
        exposures=len(table),
        ingest=summary,
        labels={str(k): int(v) for k, v in labels.items()},
        decisions={str(k): int(v) for k, v in verdicts["decision"].value_counts().items()},
        most_novel=[
            (r.exposure_id, float(r.distance), int(r.cell_x), int(r.cell_y)) for r in novel.itertuples()
        ],
        novelty_reference=(quantile, float(np.quantile(table["distance"], quantile))),
        lake=lake.root,
    )
    for line in result.lines():
        _LOG.info(line)
    return result
