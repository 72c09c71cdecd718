"""The live night: each exposure sorted minutes after it lands, with alerts.

``desomspark watch`` runs a Spark Structured Streaming query over the folder
where the camera writes.  The source lists file *paths* (the ``binaryFile``
format with only its ``path`` and ``modificationTime`` columns selected, so
no content is read by the source); each micro-batch of new files goes
through the same stages as ``nightly`` -- ingest, histo-vectors, cells with
the champion models -- and commits to the lake as a micro-batch
(:meth:`lake.Lake.commit_batch`).

Arrival contract
    A file is read when it appears under a FITS name (``*.fits``,
    ``*.fits.fz``, ``*.fits.gz``...).  Writers make it appear complete:
    write to a hidden or temporary name and rename (rsync and most transfer
    tools do this by default: their temporary files start with a dot, which
    Spark never lists; ``name.fits.part`` is not a FITS name either).  A
    file written in place under its final name may be read half-written:
    it then becomes a ``truncated`` reject and is not read again.

Exactly once
    Spark's checkpoint (``<lake>/_watch/checkpoint``) records each batch's
    files before the batch runs; a batch cut short (crash, SIGKILL) runs
    again with the same id and the same files after a restart, and its
    commits replace those of its earlier try.  The tables then hold every
    exposure once, as a batch ``nightly`` over the same files would.
    Notifications (stdout, webhook) are at least once: an alert whose row
    was committed is never raised again, one raised just before a crash may
    be raised again.

Alerts
    Rule ``bad_run``: ``alert_min_bad`` of the last ``alert_window``
    exposures (in observation order) sit in cells whose expert label is not
    a good one.  An alert is raised once per run of such exposures, not once
    per exposure: a row in ``alerts/``, a line on stdout and, when
    ``watch.webhook`` is set, a JSON POST (a webhook that is down is logged
    and skipped).
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .config import Config, WatchConfig
from .fitsio import FITS_SUFFIXES, local_path
from .lake import Batch, Lake

_LOG = logging.getLogger(__name__)

#: the glob of names the stream reads (Hadoop glob syntax); anything else in the folder is not an arrival
ARRIVAL_GLOB = "*{" + ",".join(FITS_SUFFIXES) + "}"


@dataclass(frozen=True)
class Alert:
    """One raised alert: a run of exposures that made a rule fire."""

    night: str
    rule: str
    exposures: tuple[str, ...]
    cells: tuple[str, ...]
    detail: str

    @property
    def alert_id(self) -> str:
        return f"{self.rule}:{self.night}:{self.exposures[0]}"

    def row(self, raised_at: datetime) -> dict:
        return dict(night=self.night, alert_id=self.alert_id, rule=self.rule, raised_at=raised_at,
                    exposures=list(self.exposures), cells=list(self.cells), detail=self.detail)

    def line(self) -> str:
        return f"ALERT {self.rule} night {self.night}: {self.detail}"


def bad_runs(night_table: pd.DataFrame, night: str, cfg: WatchConfig) -> list[Alert]:
    """The ``bad_run`` alerts of one night's assignments (observation order), one per run of firing windows.

    ``night_table`` has ``exposure_id``, ``mjd_obs``, ``cell_x``, ``cell_y``
    and ``label`` (the cell's label when the exposure was assigned).
    """
    table = night_table.sort_values(["mjd_obs", "exposure_id"]).reset_index(drop=True)
    bad = table["label"].notna() & ~table["label"].isin(cfg.good_labels)
    window = cfg.alert_window
    alerts, firing = [], False
    for end in range(len(table)):
        start = max(0, end - window + 1)
        fires = int(bad.iloc[start:end + 1].sum()) >= cfg.alert_min_bad
        if fires and not firing:
            rows = table.iloc[start:end + 1][bad.iloc[start:end + 1].to_numpy()]
            alerts.append(Alert(
                night=night, rule="bad_run", exposures=tuple(rows["exposure_id"]),
                cells=tuple(f"{int(r.cell_x)},{int(r.cell_y)}" for r in rows.itertuples()),
                detail=f"{len(rows)} of the last {end - start + 1} exposures in cells labelled "
                       f"{', '.join(sorted(set(rows['label'])))} (last {table['exposure_id'].iloc[end]})"))
        firing = fires
    return alerts


def post_webhook(url: str, alert: Alert, timeout: float) -> bool:
    """POST the alert as JSON; False (logged) when the webhook cannot be reached."""
    body = json.dumps({"alert_id": alert.alert_id, "rule": alert.rule, "night": alert.night,
                       "exposures": list(alert.exposures), "cells": list(alert.cells),
                       "detail": alert.detail}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError as exc:  # URLError, refused, timed out: the night goes on
        _LOG.warning(f"watch: webhook {url} not reached for {alert.alert_id}: {exc}")
        return False


def raise_alerts(lake: Lake, nights: list[str], batch_id: str, cfg: WatchConfig) -> list[Alert]:
    """Evaluate the rules on the nights a batch touched; record, print and POST the new alerts."""
    known = set()
    if lake.nights("alerts"):
        known = set(lake.read("alerts", columns=["alert_id"]).column("alert_id").to_pylist())
    new = []
    for night in sorted(set(nights) & set(lake.nights("assignments"))):  # a batch of rejects only maps nothing
        assigned = lake.read("assignments", nights=[night]).to_pandas()
        times = lake.read("exposures", nights=[night], columns=["exposure_id", "mjd_obs"]).to_pandas()
        table = assigned.merge(times, on="exposure_id", how="left")
        new += [a for a in bad_runs(table, night, cfg) if a.alert_id not in known]
    if not new:
        return []
    now = datetime.now(timezone.utc)
    staging = lake.new_staging()
    for night in sorted({a.night for a in new}):
        rows = [a.row(now) for a in new if a.night == night]
        with lake.open(staging, "alerts", f"night={night}", "part-0.parquet", mode="wb") as fh:
            pq.write_table(schema.conform(pa.Table.from_pylist(rows), "alerts").drop(["night"]), fh)
    lake.commit_batch(staging, ["alerts"], batch_id)
    for alert in new:
        _LOG.warning(alert.line())
        if cfg.webhook:
            post_webhook(cfg.webhook, alert, cfg.webhook_timeout)
    return new


def run_batch(spark, paths: list[str], modified: list[float], batch_id: int, lake: Lake, cfg: Config,
              night: str | None = None, camera: str | None = None) -> pd.DataFrame:
    """One micro-batch: ingest the new files, map their exposures, raise alerts; returns its assignments."""
    from .ingest import ingest_files
    from .pipeline import Champions

    if not paths:
        return pd.DataFrame()
    t0 = time.time()
    champions = Champions.of(lake, cfg)  # a promotion during the night takes effect at the next batch
    files = [local_path(p) or p for p in paths]
    summary = ingest_files(spark, files, lake, night, cfg.ingest, camera, batch=str(batch_id))
    table = pd.DataFrame()
    if summary.exposures:
        batch = Batch(str(batch_id), summary.exposures)
        table = champions.map_exposures(spark, lake, sorted({k.split("/")[0] for k in summary.exposures}), batch)
    raise_alerts(lake, summary.nights, str(batch_id), cfg.watch)
    done = time.time()
    latency = done - np.asarray(modified, dtype=float)
    _LOG.info(f"watch: batch {batch_id}: {len(files)} files -> {len(table)} exposures assigned, "
              f"{summary.rejected} rejected in {done - t0:.1f} s; latency from file to cell "
              f"p50 {np.percentile(latency, 50):.1f} s, max {latency.max():.1f} s")
    return table


def watch(spark, arrivals: str, lake: Lake, cfg: Config, night: str | None = None, camera: str | None = None,
          timeout: float | None = None) -> None:
    """Sort the files landing in ``arrivals`` until stopped (or for ``timeout`` seconds)."""
    from pyspark.sql import functions as F

    c = cfg.watch
    stream = (spark.readStream.format("binaryFile")
              .schema("path string, modificationTime timestamp, length long, content binary")
              .option("pathGlobFilter", ARRIVAL_GLOB)
              .option("maxFilesPerTrigger", c.max_files_per_batch)
              .load(arrivals)
              .select("path", F.col("modificationTime").cast("double").alias("modified")))

    def each_batch(frame, batch_id: int) -> None:
        rows = frame.orderBy("path").collect()
        run_batch(spark, [r.path for r in rows], [r.modified for r in rows], batch_id, lake, cfg, night, camera)

    query = (stream.writeStream.foreachBatch(each_batch)
             .option("checkpointLocation", lake.spark_path("_watch", "checkpoint"))
             .trigger(processingTime=f"{c.trigger_seconds} seconds")
             .start())
    _LOG.info(f"watch: sorting the files that land in {arrivals} into {lake.root} "
              f"(every {c.trigger_seconds:g} s; Ctrl-C stops)")
    # Ctrl-C or SIGTERM (a scheduler stopping the job) end the wait; the query then stops between
    # batches' calls.  PySpark's own SIGINT handler would cancel jobs from inside a running py4j call.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not stop.is_set() and query.isActive and (deadline is None or time.monotonic() < deadline):
            query.awaitTermination(1.0)
        if query.exception() is not None:
            raise RuntimeError(f"the watch query failed: {query.exception()}")
    finally:
        query.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _LOG.info("watch: stopped")
