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
    ``*.fits.fz``, ``*.fits.gz``...) *and* has settled: its size and
    modification time have not changed for ``settle_seconds``.  Two ways of
    writing are therefore safe:

    * write to a hidden or temporary name and rename (rsync and most
      transfer tools do this by default: their temporary files start with a
      dot, which Spark never lists; ``name.fits.part`` is not a FITS name
      either).  The file is complete when it appears;
    * write in place under the final name, without pausing longer than
      ``settle_seconds``: the batch that lists the file waits until it has
      settled, so a half-written file is read once it is complete.

    A file that stops growing before it is complete (a writer that died) is
    read once it has settled and becomes a ``truncated`` reject.  Files on an
    object store (``s3a://``...) appear whole and are not waited for.

Duplicates
    An exposure id already in the lake for the same night (committed by an
    earlier batch, from another file) makes the new file a
    ``duplicate_exposure`` reject; the first file to land is kept, as the
    first file in path order is in a batch ``nightly``.

Exactly once
    Spark's checkpoint (``<lake>/_watch/checkpoint``) records each batch's
    files before the batch runs; a batch cut short (crash, SIGKILL) runs
    again with the same id and the same files after a restart, and its
    commits replace those of its earlier try.  The tables then hold every
    exposure once, as a batch ``nightly`` over the same files would.
    Notifications (stdout, webhook) are at least once: an alert whose row
    was committed is never raised again, one raised just before a crash may
    be raised again.

Alerts (``watch.rules`` in conf)
    ``bad_run``
        ``alert_min_bad`` of the last ``alert_window`` exposures (in
        observation order) sit in cells whose expert label is not a good one.
    ``novelty``
        an exposure's novelty (latent distance to its cell's prototype, over
        the cell's own scale: :class:`exposure_mapper.ExposureMapper`) is
        above ``novelty_margin`` times the ``novelty_quantile`` of the
        distances of the exposures mapped before it by the same model (the
        ``drift_window`` nights before and earlier tonight; at least
        ``novelty_min_reference`` of them).
    ``dead_ccd``
        a CCD is dead (no detection, constant or unreadable pixels) on
        ``dead_ccd_exposures`` consecutive exposures.

    An alert is raised once per run of firing exposures, not once per
    exposure: a row in ``alerts/``, a line on stdout and, when
    ``watch.webhook`` is set, a JSON POST (a webhook that is down is logged
    and skipped).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import functions as F

from desomspark import registry
from desomspark.config import Config, WatchConfig
from desomspark.errors import UserError
from desomspark.ingest.fitsio import FITS_SUFFIXES, local_path
from desomspark.lake import schema
from desomspark.lake.commit import crash_point
from desomspark.lake.layout import Batch, Lake
from desomspark.stages.ingest import ingest_files
from desomspark.stages.nightly import map_exposures
from desomspark.stages.verdicts import decide_nights

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
    ccds: tuple[str, ...] = ()

    @property
    def alert_id(self) -> str:
        return f"{self.rule}:{self.night}:{self.exposures[0]}"

    def row(self, raised_at: datetime) -> dict:
        return dict(
            night=self.night,
            alert_id=self.alert_id,
            rule=self.rule,
            raised_at=raised_at,
            exposures=list(self.exposures),
            cells=list(self.cells),
            ccds=list(self.ccds),
            detail=self.detail,
        )

    def line(self) -> str:
        return f"ALERT {self.rule} night {self.night}: {self.detail}"


def _rising(fires: np.ndarray) -> np.ndarray:
    """Indices where a rule starts firing: one alert per run of firing exposures."""
    fires = np.asarray(fires, dtype=bool)
    return np.flatnonzero(fires & ~np.concatenate([[False], fires[:-1]]))


def _cells(rows: pd.DataFrame) -> tuple[str, ...]:
    return tuple(f"{int(r.cell_x)},{int(r.cell_y)}" for r in rows.itertuples())


def _in_order(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["mjd_obs", "exposure_id"]).reset_index(drop=True)


def bad_runs(night_table: pd.DataFrame, night: str, cfg: WatchConfig) -> list[Alert]:
    """Rule ``bad_run`` on one night's assignments: one alert per run of firing windows.

    ``night_table`` has ``exposure_id``, ``mjd_obs``, ``cell_x``, ``cell_y``
    and ``label`` (the cell's label when the exposure was assigned).
    """
    table = _in_order(night_table)
    bad = (table["label"].notna() & ~table["label"].isin(cfg.good_labels)).to_numpy()
    window = cfg.alert_window
    counts = np.convolve(bad, np.ones(window, dtype=int))[: len(bad)]  # bad ones among the last `window`
    alerts = []
    for end in _rising(counts >= cfg.alert_min_bad):
        start = max(0, end - window + 1)
        rows = table.iloc[start : end + 1][bad[start : end + 1]]
        alerts.append(
            Alert(
                night=night,
                rule="bad_run",
                exposures=tuple(rows["exposure_id"]),
                cells=_cells(rows),
                detail=f"{len(rows)} of the last {end - start + 1} exposures in cells labelled "
                f"{', '.join(sorted(set(rows['label'])))} (last {table['exposure_id'].iloc[end]})",
            )
        )
    return alerts


def novelties(
    night_table: pd.DataFrame, night: str, cfg: WatchConfig, reference: np.ndarray = np.empty(0)
) -> list[Alert]:
    """Rule ``novelty``: exposures farther from their cell's prototype than those mapped before them.

    ``night_table`` is as for :func:`bad_runs`, with ``distance``;
    ``reference`` holds the distances of earlier nights under the same model.
    Each exposure is compared with ``novelty_margin`` times the
    ``novelty_quantile`` of the reference and of tonight's exposures before
    it, once there are at least ``novelty_min_reference`` of them.
    """
    table = _in_order(night_table)
    distance = table["distance"].to_numpy(dtype=float)
    fires = np.zeros(len(table), dtype=bool)
    thresholds = np.full(len(table), np.nan)
    for i in range(len(table)):
        before = np.concatenate([reference, distance[:i]])
        if len(before) >= cfg.novelty_min_reference:
            thresholds[i] = cfg.novelty_margin * np.quantile(before, cfg.novelty_quantile)
            fires[i] = distance[i] > thresholds[i]
    alerts = []
    for i in _rising(fires):
        rows = table.iloc[[i]]
        alerts.append(
            Alert(
                night=night,
                rule="novelty",
                exposures=(table["exposure_id"].iloc[i],),
                cells=_cells(rows),
                detail=f"exposure {table['exposure_id'].iloc[i]} is unlike the map: "
                f"novelty {distance[i]:.3g} "
                f"above {cfg.novelty_margin:g} x the {cfg.novelty_quantile:g} quantile of the exposures "
                f"before it ({thresholds[i]:.3g})",
            )
        )
    return alerts


def dead_ccds(night_ccds: pd.DataFrame, night: str, cfg: WatchConfig) -> list[Alert]:
    """Rule ``dead_ccd``: a CCD dead on ``dead_ccd_exposures`` consecutive exposures.

    ``night_ccds`` has one row per exposure and CCD: ``exposure_id``,
    ``mjd_obs``, ``hdu_index``, ``extname``, ``n_detected``, ``dead`` and
    ``reject_reason``.  CCDs that die on the same exposure share one alert.
    """
    frame = night_ccds.assign(
        down=night_ccds["dead"].fillna(False).astype(bool)
        | night_ccds["reject_reason"].notna()
        | (night_ccds["n_detected"].fillna(0) == 0),
        # a CCD by its EXTNAME, or by its HDU where the file names none
        ccd=night_ccds["extname"].fillna("HDU " + night_ccds["hdu_index"].astype(str)),
    )
    order = _in_order(frame[["exposure_id", "mjd_obs"]].drop_duplicates())["exposure_id"]
    down = (
        frame.pivot_table(index="exposure_id", columns="ccd", values="down", aggfunc="max", fill_value=False)
        .reindex(order, fill_value=False)
        .astype(bool)
    )
    k = cfg.dead_ccd_exposures
    firing = {}  # exposure index -> CCDs that start a run of k dead exposures there
    for ccd in down.columns:
        flags = down[ccd].to_numpy()
        run = np.convolve(flags, np.ones(k, dtype=int))[: len(flags)] >= k
        for end in _rising(run):
            firing.setdefault(end, []).append(ccd)
    return [
        Alert(
            night=night,
            rule="dead_ccd",
            exposures=tuple(order.iloc[end - k + 1 : end + 1]),
            cells=(),
            ccds=tuple(sorted(ccds)),
            detail=f"CCD {', '.join(sorted(ccds))} dead on {k} consecutive exposures "
            f"(last {order.iloc[end]})",
        )
        for end, ccds in sorted(firing.items())
    ]


def post_webhook(url: str, alert: Alert, timeout: float) -> bool:
    """POST the alert as JSON; False (logged) when the webhook cannot be reached."""
    return post_json(
        url,
        {
            "alert_id": alert.alert_id,
            "rule": alert.rule,
            "night": alert.night,
            "exposures": list(alert.exposures),
            "cells": list(alert.cells),
            "ccds": list(alert.ccds),
            "detail": alert.detail,
        },
        timeout,
        alert.alert_id,
    )


def post_retakes(verdicts: pd.DataFrame, cfg: WatchConfig) -> int:
    """POST each ``retake`` decision of a batch to the webhook (``kind: "verdict"``); returns how many."""
    if not cfg.webhook or verdicts.empty:
        return 0
    sent = 0
    for v in verdicts[verdicts["decision"] == "retake"].itertuples():
        body = {
            "kind": "verdict",
            "night": v.night,
            "exposure_id": v.exposure_id,
            "decision": v.decision,
            "p_bad": float(v.p_bad),
            "reason": v.reason,
            "cell": f"{v.cell_x},{v.cell_y}",
        }
        sent += post_json(cfg.webhook, body, cfg.webhook_timeout, f"retake {v.night}/{v.exposure_id}")
    return sent


def post_json(url: str, payload: dict, timeout: float, what: str) -> bool:
    """POST ``payload`` as JSON; False (logged) when the webhook cannot be reached."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError as exc:  # URLError, refused, timed out: the night goes on
        _LOG.warning(f"watch: webhook {url} not reached for {what}: {exc}")
        return False


def night_alerts(lake: Lake, night: str, cfg: WatchConfig) -> list[Alert]:
    """Every alert the configured rules raise on one night of the lake (raised before or not)."""
    times = lake.read("exposures", nights=[night], columns=["exposure_id", "mjd_obs"]).to_pandas()
    alerts = []
    if "dead_ccd" in cfg.rules:
        ccds = lake.read(
            "ccds",
            nights=[night],
            columns=["exposure_id", "hdu_index", "extname", "n_detected", "dead", "reject_reason"],
        ).to_pandas()
        alerts += dead_ccds(ccds.merge(times, on="exposure_id"), night, cfg)
    if night not in lake.nights("assignments"):  # a batch of rejects maps nothing
        return alerts
    table = (
        lake.read("assignments", nights=[night], columns=schema.ASSIGNMENT_RESULTS)
        .to_pandas()
        .merge(times, on="exposure_id", how="left")
    )
    if "bad_run" in cfg.rules:
        alerts += bad_runs(table, night, cfg)
    if "novelty" in cfg.rules and len(table):
        alerts += novelties(table, night, cfg, _reference_distances(lake, night, table, cfg))
    return alerts


def _reference_distances(lake: Lake, night: str, table: pd.DataFrame, cfg: WatchConfig) -> np.ndarray:
    """Distances of the ``drift_window`` nights before ``night`` under the model that mapped it."""
    earlier = [n for n in lake.nights("assignments") if n < night][-cfg.drift_window :]
    if not earlier:
        return np.empty(0)
    past = lake.read("assignments", nights=earlier, columns=["desom2_version", "distance"]).to_pandas()
    return past.loc[past["desom2_version"].isin(set(table["desom2_version"])), "distance"].to_numpy(
        dtype=float
    )


def raise_alerts(lake: Lake, nights: list[str], batch_id: str, cfg: WatchConfig) -> list[Alert]:
    """Evaluate the rules on the nights a batch touched; record, print and POST the new alerts.

    The batch's commit replaces its earlier try's files: alerts that try committed are staged
    again with the new ones, so a re-run that raises other alerts loses none.
    """
    committed = schema.empty_table("alerts")
    if lake.nights("alerts"):
        committed = lake.scan("alerts", [*schema.ALERTS.names, "__filename"])
    known = set(committed.column("alert_id").to_pylist())
    new = []
    for night in sorted(set(nights) & set(lake.nights("exposures"))):
        new += [a for a in night_alerts(lake, night, cfg) if a.alert_id not in known]
    if not new:
        return []
    now = datetime.now(UTC)
    earlier = [
        r for r in committed.to_pylist() if f"/part-b{batch_id}-" in r.pop("__filename", "")
    ]  # this batch's earlier try
    staging = lake.new_staging()
    lake.stage_arrow(staging, "alerts", pa.Table.from_pylist([a.row(now) for a in new] + earlier))
    lake.commit_batch(staging, ["alerts"], batch_id)
    for alert in new:
        _LOG.warning(alert.line())
        if cfg.webhook:
            post_webhook(cfg.webhook, alert, cfg.webhook_timeout)
    return new


def wait_until_settled(paths: list[str], settle_seconds: float, poll: float = 0.5) -> dict[str, float]:
    """Wait until no local file of ``paths`` has changed for ``settle_seconds``; their final mtimes.

    A file is settled when its modification time is ``settle_seconds`` old,
    or when its size and modification time have not changed for that long
    while watched (a file server whose clock runs ahead).  A file that
    disappears is left to the ingest (a ``not_found`` reject).
    """
    seen: dict[str, tuple[tuple[int, int], float]] = {}
    told = False
    while True:
        waiting, mtimes = [], {}
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            mtimes[path] = st.st_mtime
            state = (st.st_size, st.st_mtime_ns)
            if path not in seen or seen[path][0] != state:
                seen[path] = (state, time.monotonic())
            if (
                time.time() - st.st_mtime < settle_seconds
                and time.monotonic() - seen[path][1] < settle_seconds
            ):
                waiting.append(path)
        if not waiting:
            return mtimes
        if not told:
            _LOG.info(
                f"watch: waiting for {len(waiting)} file(s) still being written to settle "
                f"({settle_seconds:g} s unchanged): {', '.join(os.path.basename(w) for w in waiting[:5])}"
            )
            told = True
        time.sleep(poll)


class ChampionsKeeper:
    """The champion pair for each batch, and the last one while MLflow does not answer.

    A promotion during the night takes effect at the next batch.  When MLflow is unreachable the
    pair of the last batch goes on sorting (logged once, not per batch); MLflow is asked again
    after a back-off that doubles from ``first_pause`` to ``max_pause`` seconds, so that a batch
    does not wait on a dead server's time-outs.  With no pair yet the outage is the run's error.
    """

    def __init__(self, lake: Lake, cfg: Config, first_pause: float = 5.0, max_pause: float = 300.0):
        self.lake, self.cfg = lake, cfg
        self.first_pause, self.max_pause = first_pause, max_pause
        self.pair: registry.Champions | None = None
        self.pause, self.next_try, self.down = first_pause, 0.0, False

    def current(self) -> registry.Champions:
        if self.down and time.monotonic() < self.next_try:
            return self.pair
        try:
            pair = registry.Champions.of(self.lake, self.cfg)
        except (registry.ModelMismatch, UserError):
            raise
        except Exception as exc:  # MLflow's client fails in many kinds when its server is away
            if self.pair is None:
                raise registry.RegistryError(
                    f"MLflow unreachable, no champion models to sort with: {exc}"
                ) from exc
            if not self.down:
                _LOG.warning(
                    f"watch: MLflow unreachable ({type(exc).__name__}); sorting on with desom1 "
                    f"v{self.pair.desom1.version} and desom2 v{self.pair.desom2.version} until it answers"
                )
            self.down, self.next_try = True, time.monotonic() + self.pause
            self.pause = min(self.max_pause, self.pause * 2)
            return self.pair
        if self.down:
            _LOG.warning("watch: MLflow answers again")
        self.pair, self.down, self.pause = pair, False, self.first_pause
        return pair


def run_batch(
    spark,
    paths: list[str],
    modified: list[float],
    batch_id: int,
    lake: Lake,
    cfg: Config,
    night: str | None = None,
    camera: str | None = None,
    keeper: ChampionsKeeper | None = None,
) -> pd.DataFrame:
    """One micro-batch: ingest the new files, map their exposures, raise alerts; returns its assignments."""
    if not paths:
        return pd.DataFrame()
    t0 = time.time()
    champions = (keeper or ChampionsKeeper(lake, cfg)).current()
    files = [local_path(p) or p for p in paths]
    local = [f for f in files if "://" not in f]  # an object store shows whole objects only
    settled = wait_until_settled(local, cfg.watch.settle_seconds)
    modified = [settled.get(f, m) for f, m in zip(files, modified)]
    summary = ingest_files(spark, files, lake, night, cfg.ingest, camera, batch=str(batch_id))
    crash_point("watch:after-ingest")  # the tests kill the batch between its commits
    table = pd.DataFrame()
    if summary.exposures:
        batch = Batch(str(batch_id), summary.exposures)
        nights = sorted({k.split("/")[0] for k in summary.exposures})
        table = map_exposures(spark, lake, champions, nights, batch)
        crash_point("watch:after-assign")
        verdicts = decide_nights(lake, cfg, nights, batch, desom2=champions.desom2)
        post_retakes(verdicts, cfg.watch)
    raise_alerts(lake, summary.nights, str(batch_id), cfg.watch)
    done = time.time()
    latency = done - np.asarray(modified, dtype=float)
    _LOG.info(
        f"watch: batch {batch_id}: {len(files)} files -> {len(table)} exposures assigned, "
        f"{summary.rejected} rejected in {done - t0:.1f} s; latency from file to cell "
        f"p50 {np.percentile(latency, 50):.1f} s, max {latency.max():.1f} s"
    )
    return table


def watch(
    spark,
    arrivals: str,
    lake: Lake,
    cfg: Config,
    night: str | None = None,
    camera: str | None = None,
    timeout: float | None = None,
) -> None:
    """Sort the files landing in ``arrivals`` until stopped (or for ``timeout`` seconds)."""
    c = cfg.watch
    stream = (
        spark.readStream.format("binaryFile")
        .schema("path string, modificationTime timestamp, length long, content binary")
        .option("pathGlobFilter", ARRIVAL_GLOB)
        .option("maxFilesPerTrigger", c.max_files_per_batch)
        .load(arrivals)
        .select("path", F.col("modificationTime").cast("double").alias("modified"))
    )

    keeper = ChampionsKeeper(lake, cfg)

    def each_batch(frame, batch_id: int) -> None:
        rows = frame.orderBy("path").collect()
        paths, modified = [r.path for r in rows], [r.modified for r in rows]
        run_batch(spark, paths, modified, batch_id, lake, cfg, night, camera, keeper)

    query = (
        stream.writeStream.foreachBatch(each_batch)
        .option("checkpointLocation", lake.spark_path("_watch", "checkpoint"))
        .trigger(processingTime=f"{c.trigger_seconds} seconds")
        .start()
    )
    _LOG.info(
        f"watch: sorting the files that land in {arrivals} into {lake.root} "
        f"(every {c.trigger_seconds:g} s; Ctrl-C stops)"
    )
    # Ctrl-C or SIGTERM (a scheduler stopping the job) end the wait; the query then stops between
    # batches' calls.  PySpark's own SIGINT handler would cancel jobs from inside a running py4j call.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not stop.is_set() and query.isActive and (deadline is None or time.monotonic() < deadline):
            query.awaitTermination(1.0)
        # --timeout stops between batches: a batch cut short is safe (it runs again) but noisy
        while query.isActive and query.status.get("isTriggerActive") and not stop.is_set():
            query.awaitTermination(0.2)
        if query.exception() is not None:
            raise RuntimeError(f"the watch query failed: {query.exception()}")
    finally:
        query.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _LOG.info("watch: stopped")
