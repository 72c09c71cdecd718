"""Histo-vectors: each exposure's cutouts counted on the DESOM-1 map (paper section 3.5).

A cutout lands on its best-matching DESOM-1 node; an exposure's histo-vector
is the number of detections per node (row-major over the 25x25 map), each
cutout counting for ``weight = n_detected / n_sampled`` of its CCD, so the
vector sums to the detections it stands for (paper section 5.2).

On Spark (``mapInArrow``): a Python worker loads DESOM-1 once, from the
model's artifact location resolved on the driver, on the GPU when the
executor has one; each batch of cutouts becomes (exposure, node, weight)
rows, which Spark sums per exposure.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from desomspark import registry
from desomspark.desom.mapping import batch_nodes
from desomspark.errors import UserError
from desomspark.lake import schema
from desomspark.lake.layout import Batch, Lake
from desomspark.registry import RegisteredModel

_LOG = logging.getLogger(__name__)


def histovector(nodes: np.ndarray, weights: np.ndarray, n_nodes: int) -> np.ndarray:
    """Weighted counts per node: the exposure's density map, flattened row-major."""
    return np.bincount(nodes, weights=weights, minlength=n_nodes).astype(np.float64)


def node_rows(batches: Iterator, model_uri: str, threads: int | None) -> Iterator:
    """``mapInArrow`` body: Arrow batches of cutouts -> (night, exposure_id, node, weight) batches.

    Arrow, not pandas: the pixels column reaches the model without a Python
    bytes object per cutout (see :func:`mapping.batch_nodes`).
    """
    import pyarrow as pa

    model = registry.cached_model(model_uri, threads=threads)
    for batch in batches:
        nodes = batch_nodes(model, batch)
        yield pa.RecordBatch.from_arrays(
            [
                batch.column("night"),
                batch.column("exposure_id"),
                pa.array(nodes.astype(np.int32)),
                batch.column("weight").cast(pa.float64()),
            ],
            names=["night", "exposure_id", "node", "weight"],
        )


def compute_histovectors(
    spark, lake: Lake, desom1: RegisteredModel, nights: list[str] | None = None, batch: Batch | None = None
):
    """A Spark DataFrame of histo-vectors (schema ``HISTOVECTORS``) for the lake's cutouts (or a batch's)."""
    cutouts = lake.spark_read(spark, "cutouts")
    if nights is not None:
        cutouts = cutouts.where(F.col("night").isin(nights))
    if batch is not None:
        cutouts = cutouts.where(batch.spark_filter())
    cutouts = cutouts.select("night", "exposure_id", "weight", "pixels")
    model_uri, desom1_version, n_nodes = desom1.uri, desom1.version, desom1.n_nodes
    slots = max(1, spark.sparkContext.defaultParallelism)
    threads = max(1, (os.cpu_count() or 1) // slots)
    per_node = cutouts.mapInArrow(
        lambda it: node_rows(it, model_uri, threads),
        "night string, exposure_id string, node int, weight double",
    )

    def one_exposure(rows: pd.DataFrame) -> pd.DataFrame:
        counts = histovector(rows["node"].to_numpy(), rows["weight"].to_numpy(), n_nodes)
        return pd.DataFrame(
            {
                "night": rows["night"].iloc[:1],
                "exposure_id": rows["exposure_id"].iloc[:1],
                "desom1_version": desom1_version,
                "n_cutouts": len(rows),
                "n_detected": float(rows["weight"].sum()),
                "counts": [counts],
            }
        )

    return per_node.groupBy("night", "exposure_id").applyInPandas(
        one_exposure, schema.spark_schema("histovectors")
    )


def write_histovectors(
    spark, lake: Lake, desom1: RegisteredModel, nights: list[str] | None = None, batch: Batch | None = None
) -> int:
    """Compute and commit the histo-vectors of ``nights`` (default: every night of cutouts/).

    With ``batch`` (a live night's micro-batch) only its exposures, added to their nights.
    """
    nights = nights or lake.nights("cutouts")
    if not nights:
        raise UserError(f"the lake {lake.root} has no cutouts: run ingest first")
    staging = lake.new_staging(replaces=["histovectors"] if batch is None else None)
    frame = compute_histovectors(spark, lake, desom1, nights, batch)
    desom1_version = desom1.version
    (
        frame.select(*schema.HISTOVECTORS.names)
        .coalesce(max(1, len(nights)))
        .write.mode("overwrite")
        .partitionBy("night")
        .parquet(lake.spark_path(staging, "histovectors"))
    )
    summary = {"desom1_version": desom1_version}
    if batch is None:
        lake.commit_nights(staging, ["histovectors"], nights, summary=summary)
        n = lake.read("histovectors", nights=nights, columns=["exposure_id"]).num_rows
    else:
        lake.commit_batch(staging, ["histovectors"], batch.id, summary=summary)
        n = len(batch.exposures)
    _LOG.info(f"histovectors: {n} exposures over {len(nights)} night(s) with desom1 version {desom1_version}")
    return n
