"""Assignment: histo-vector -> DESOM-2 cell, novelty distance, and the cell's expert label.

A pandas UDF (``mapInPandas``) loads DESOM-2 once per Python worker and maps
each exposure's histo-vector to its cell (x = column, y = row on the map) and
its novelty distance: the latent distance to the cell's prototype over the
cell's own spread (:class:`exposure_mapper.ExposureMapper`); an exposure far
from its cell is something the map has not seen.  Expert labels (``labels/``,
last word per cell wins) are joined on the cell.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from pyspark.sql import functions as F

from desomspark import registry
from desomspark.decide.labels import KEY, inherited_rows
from desomspark.desom.mapping import map_inputs
from desomspark.errors import UserError
from desomspark.lake import labellog, schema
from desomspark.lake.layout import Batch, Lake
from desomspark.lake.queries import current_labels, input_matrix, with_current_labels
from desomspark.registry import RegisteredModel

_LOG = logging.getLogger(__name__)


def assign_rows(
    batches: Iterator[pd.DataFrame], desom2: RegisteredModel, threads: int | None
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: histo-vectors -> cell, distance and latent vector (labels come later)."""
    mapper = registry.cached_model(desom2.uri, threads=threads)
    cols = desom2.map_shape[1]
    for batch in batches:
        if batch.empty:
            continue
        for version in batch["desom1_version"].unique():
            registry.check_desom1(desom2, version)
        node, dist, z = map_inputs(mapper, input_matrix(batch["counts"], batch, desom2.qa_inputs))
        yield pd.DataFrame(
            {
                "night": batch["night"],
                "exposure_id": batch["exposure_id"],
                "desom1_version": batch["desom1_version"],
                "desom2_version": desom2.version,
                "cell": node.astype(np.int32),
                "cell_x": (node % cols).astype(np.int32),
                "cell_y": (node // cols).astype(np.int32),
                "distance": dist.astype(np.float64),
                "latent": list(z.astype(np.float32)),
            }
        )


def write_assignments(
    spark, lake: Lake, desom2: RegisteredModel, nights: list[str] | None = None, batch: Batch | None = None
) -> pd.DataFrame:
    """Assign every exposure of ``nights`` (default: all nights with histo-vectors) and commit.

    With ``batch`` (a live night's micro-batch) only its exposures, added to
    their nights; the batch's rows are returned.
    """
    desom1_version, desom2_version = desom2.desom1_version, desom2.version
    staging = lake.new_staging(replaces=["assignments"] if batch is None else None)
    nights = nights or lake.nights("histovectors")
    if not nights:
        raise UserError(f"the lake {lake.root} has no histo-vectors: run histovectors first")
    if batch is None:
        nights = mappable_nights(lake, nights, str(desom1_version))
    vectors = lake.spark_read(spark, "histovectors").where(
        F.col("night").isin(nights) & (F.col("desom1_version") == str(desom1_version))
    )
    if batch is not None:
        vectors = vectors.where(batch.spark_filter())
    if vectors.limit(1).count() == 0:
        other = lake.read("histovectors", nights=nights, columns=["desom1_version"]).column("desom1_version")
        found = sorted(set(other.to_pylist()))
        if found:
            raise registry.ModelMismatch(
                f"DESOM-2 v{desom2_version} needs histo-vectors of desom1 v{desom1_version}; "
                f"nights {', '.join(nights)} have only v{', v'.join(found)}"
            )
        raise UserError(f"no histo-vectors for nights {', '.join(nights)}")
    qa_inputs = list(desom2.qa_inputs)
    if qa_inputs:
        # the model also reads the exposures' quality numbers (measured at ingest)
        vectors = vectors.join(
            lake.spark_read(spark, "exposures").select("night", "exposure_id", *qa_inputs),
            on=["night", "exposure_id"],
            how="left",
        )
    slots = max(1, spark.sparkContext.defaultParallelism)
    threads = max(1, (os.cpu_count() or 1) // slots)
    out_schema = (
        "night string, exposure_id string, desom1_version string, desom2_version string, "
        "cell int, cell_x int, cell_y int, distance double, latent array<float>"
    )
    cells = vectors.mapInPandas(lambda it: assign_rows(it, desom2, threads), out_schema)
    labels = spark.createDataFrame(
        current_labels(lake, desom2_version).astype({"cell_x": "int32", "cell_y": "int32"}),
        "cell_x int, cell_y int, label string",
    )
    result = cells.join(labels, on=["cell_x", "cell_y"], how="left").select(*schema.ASSIGNMENTS.names)
    inherit_labels(lake, desom2_version, nights, batch)
    result.coalesce(max(1, len(nights))).write.mode("overwrite").partitionBy("night").parquet(
        lake.spark_path(staging, "assignments")
    )
    summary = {"desom2_version": str(desom2_version)}
    if batch is None:
        lake.commit_nights(staging, ["assignments"], nights, summary=summary)
        table = lake.read("assignments", nights=nights).to_pandas()
    else:
        lake.commit_batch(staging, ["assignments"], batch.id, summary=summary)
        ids = sorted({key.split("/", 1)[1] for key in batch.exposures})
        table = batch.keep(
            lake.read("assignments", nights=nights, where=ds.field("exposure_id").isin(ids)).to_pandas()
        )
    _LOG.info(f"assign: {len(table)} exposures over {len(nights)} night(s) with desom2 v{desom2_version}")
    return table


def mappable_nights(lake: Lake, nights: list[str], desom1_version: str) -> list[str]:
    """The nights of ``nights`` whose every exposure has a histo-vector of ``desom1_version``.

    Committing a night replaces all its assignments: a night vectorised (wholly or partly) by
    another DESOM-1 would lose the assignments of the exposures the map cannot read.  Such nights
    are left as they are, named in one warning with the command that makes them mappable.  If no
    night is mappable, all are returned (the caller then explains the mismatch).
    """
    rows = lake.read("histovectors", nights=nights, columns=["night", "exposure_id", "desom1_version"])
    frame = rows.to_pandas()
    frame["ours"] = frame["desom1_version"] == desom1_version
    complete = frame.groupby(["night", "exposure_id"])["ours"].any().groupby("night").all()
    left = sorted(n for n in nights if not complete.get(n, False))
    if left and len(left) < len(nights):
        _LOG.warning(
            f"assign: night(s) {', '.join(left)} have histo-vectors of another DESOM-1 than "
            f"v{desom1_version}: their assignments are left as they are "
            f"(run: desomspark histovectors --lake {lake.root} --night {left[0]}, then assign)"
        )
        return [n for n in nights if n not in left]
    return nights


def inherit_labels(lake: Lake, desom2_version: str, nights: list[str], batch: Batch | None = None) -> int:
    """Before another map's assignments of ``nights`` are replaced, keep their cells' labels as labels
    of the exposures (``exposure_labels``, source ``inherited``); returns how many were recorded.

    Labels are facts about exposures: a retrained map starts from them (suggested cell labels, and
    verdicts at once).  A record already in the log is not written again.
    """
    old = lake.read(
        "assignments", nights=nights, columns=[*KEY, "desom2_version", "cell_x", "cell_y"]
    ).to_pandas()
    old = old[old["desom2_version"] != str(desom2_version)]
    if batch is not None:
        old = batch.keep(old)
    if old.empty:
        return 0
    fresh = inherited_rows(with_current_labels(lake, old), desom2_version)
    log = lake.read("exposure_labels").to_pandas()
    seen = set(
        zip(
            *(log.loc[log["source"] == "inherited", c].astype(str) for c in [*KEY, "label", "desom2_version"])
        )
    )
    keep = [
        key not in seen for key in zip(*(fresh[c].astype(str) for c in [*KEY, "label", "desom2_version"]))
    ]
    fresh = fresh[keep]
    now = pd.Timestamp.now(tz="UTC")
    rows = fresh.assign(author="inherited", labelled_at=now, undoes=None).to_dict("records")
    labellog.append(lake, "exposure_labels", rows)
    if rows:
        _LOG.info(f"assign: {len(rows)} exposures keep the labels of their cells on earlier maps")
    return len(rows)
