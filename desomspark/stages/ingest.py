"""Ingest: FITS exposures -> exposures/, ccds/, cutouts/, rejects/ (Spark).

The stages, each a Spark job over plain functions:

1. the driver lists the input files (it opens none of them);
2. *scan*: one task per file reads its headers (:func:`fitsio.scan_file`) and
   lists its image HDUs; file- and HDU-level problems become rejects;
3. *process*: one unit of work per CCD (one HDU, or the amplifier HDUs of one
   CCD), grouped into a few Spark tasks per core (:func:`n_slices`: a Spark
   task costs as much as a small CCD); each CCD reads its own
   pixels by path (:func:`fitsio.read_ccd_and_mask`), runs
   :func:`detect.process_ccd` and returns its row and cutouts as one Arrow
   batch (``mapInArrow``: columnar from numpy to Parquet, no pickled rows);
4. the four tables are written to a staging folder and committed night by
   night (:meth:`Lake.commit_nights`): a re-run replaces, never duplicates.

Every input file ends in ``exposures/`` (status ok or partial) or as a
file-level row of ``rejects/``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import functions as F

from desomspark.config import IngestConfig
from desomspark.errors import MachineFault
from desomspark.ingest.camera import GENERIC, profile_for
from desomspark.ingest.detect import CcdResult, process_ccd
from desomspark.ingest.fitsio import (
    MACHINE_FAULT,
    FileScan,
    Reject,
    file_reason,
    list_inputs,
    night_of,
    read_ccd_and_mask,
    reject_for,
    scan_file,
)
from desomspark.ingest.qa import exposure_qa
from desomspark.lake import schema
from desomspark.lake.layout import Lake

_LOG = logging.getLogger(__name__)


TABLES = ("exposures", "ccds", "cutouts", "rejects")


@dataclass
class IngestSummary:
    files: int
    ok: int
    partial: int
    rejected: int
    ccds: int
    dead_ccds: int
    cutouts: int
    nights: list[str]
    exposures: tuple[str, ...] = ()  # the exposures written, as night/exposure_id
    rejected_files: tuple[tuple[str, str, str], ...] = ()  # (file name, reason, detail) of each file reject
    no_cutouts: tuple[str, ...] = ()  # exposures ingested that gave no cutout (nothing to map)

    @classmethod
    def of(
        cls, files: list[str], exposure_df: pd.DataFrame, ccd_rows: pd.DataFrame, rejects: list[dict]
    ) -> "IngestSummary":
        """The summary of an ingest; every input file must be an exposure or a file reject."""
        used = ccd_rows[ccd_rows["reject_reason"].isna()]
        summary = cls(
            files=len(files),
            ok=int((exposure_df["status"] == "ok").sum()),
            partial=int((exposure_df["status"] == "partial").sum()),
            rejected=sum(1 for r in rejects if r["hdu_index"] is None),
            ccds=int(len(used)),
            dead_ccds=int(used["dead"].sum()) if len(used) else 0,
            cutouts=int(used["n_sampled"].sum()) if len(used) else 0,
            nights=sorted(set(exposure_df["night"]) | {r["night"] for r in rejects}),
            exposures=tuple(exposure_df["night"] + "/" + exposure_df["exposure_id"]),
            rejected_files=tuple(
                (os.path.basename(str(r["path"])), str(r["reason"]), str(r.get("detail") or ""))
                for r in rejects
                if r["hdu_index"] is None
            ),
            no_cutouts=tuple(exposure_df.loc[exposure_df["n_cutouts"] == 0, "exposure_id"].astype(str)),
        )
        if summary.ok + summary.partial + summary.rejected != summary.files:  # a bug, never the input's fault
            raise RuntimeError(
                f"ingest lost input files: {summary.files} read, {summary.ok} ok + "
                f"{summary.partial} partial + {summary.rejected} rejected"
            )
        return summary

    SHOWN = 10  # rejected files named in the summary; the rest are counted

    def line(self) -> str:
        return (
            f"ingest: {self.files} files: {self.ok} ok, {self.partial} partial, {self.rejected} rejected; "
            f"{self.ccds} CCDs ({self.dead_ccds} dead), {self.cutouts} cutouts; nights "
            f"{', '.join(self.nights)}"
        )

    def lines(self) -> list[str]:
        """The summary line, then which files were rejected and why, and the exposures with no cutout."""
        out = [self.line()]
        for name, reason, detail in self.rejected_files[: self.SHOWN]:
            out.append(f"  rejected {name}: {reason}" + (f" ({detail[:160]})" if detail else ""))
        if len(self.rejected_files) > self.SHOWN:
            out.append(
                f"  ... and {len(self.rejected_files) - self.SHOWN} more rejected files: every one, with "
                f"its reason, is a row of the lake's rejects/ table (hdu_index null)"
            )
        if self.no_cutouts:
            shown = ", ".join(self.no_cutouts[: self.SHOWN])
            more = (
                f" and {len(self.no_cutouts) - self.SHOWN} more" if len(self.no_cutouts) > self.SHOWN else ""
            )
            out.append(f"  no cutout (nothing for the map to sort): {shown}{more}")
        return out


_NO_VIEWS = dict(
    thumbnail=None, thumbnail_height=0, thumbnail_width=0, window=None, window_height=0, window_width=0
)
_NO_QA = CcdResult().qa


def read_and_process(task: dict, cfg: IngestConfig) -> CcdResult:
    """The whole work of one CCD: read (raw frames corrected), its mask plane if any, detect, cut out.

    ``task`` holds ``path``, ``exposure_id``, ``window`` and the fields of a
    :class:`fitsio.HduInfo`.  Raises :class:`fitsio.Reject`.
    """
    image, mask = read_ccd_and_mask(
        task["path"],
        task["hdu_index"],
        task.get("raw_layout"),
        task.get("mask_index"),
        task.get("mask_bits"),
        task.get("segments"),
        task.get("storage"),
    )
    return process_ccd(
        image,
        task["exposure_id"],
        task["hdu_index"],
        cfg,
        keep_window=task.get("window", False),
        pixel_scale=task.get("pixel_scale"),
        saturation=task.get("saturation"),
        mask=mask,
    )


def _ccd_task(task: dict, cfg: IngestConfig) -> tuple[dict, CcdResult | None]:
    """Read and process one HDU: the ``ccds`` row (scalars) and the result holding its cutouts.

    A reject gives the row with ``reject_reason`` and no result.
    """
    row = dict(
        night=task["night"],
        exposure_id=task["exposure_id"],
        hdu_index=task["hdu_index"],
        extname=task["extname"],
        ccd_row=task["ccd_row"],
        ccd_col=task["ccd_col"],
        height=task["height"],
        width=task["width"],
    )
    try:
        result = read_and_process(task, cfg)
    except Reject as exc:
        return row | _rejected(exc), None
    except Exception as exc:  # sep or numpy on a pathological image: reject, don't fail the night
        return row | _rejected(reject_for(exc, "unreadable_data")), None
    return row | dict(
        n_detected=result.n_detected,
        n_sampled=result.n_sampled,
        background=result.background,
        background_rms=result.background_rms,
        dead=result.dead,
        reject_reason=result.reject_reason,
        reject_detail=result.reject_detail,
        thumbnail=result.thumbnail or None,
        thumbnail_height=result.thumbnail_shape[0],
        thumbnail_width=result.thumbnail_shape[1],
        window=result.window or None,
        window_height=result.window_shape[0],
        window_width=result.window_shape[1],
        **result.qa,
    ), result


def _rejected(reject: Reject) -> dict:
    """The result columns of a CCD row whose CCD was rejected (its reject row is made on the driver)."""
    return dict(
        n_detected=0,
        n_sampled=0,
        background=None,
        background_rms=None,
        dead=False,
        reject_reason=reject.reason,
        reject_detail=reject.detail,
        **_NO_VIEWS,
        **_NO_QA,
    )


#: the cutout columns a CCD task returns (night, exposure and HDU come from its row)
_CUTOUT_FIELDS = [f for f in schema.CUTOUTS if f.name not in ("night", "exposure_id", "hdu_index")]
#: what one CCD task returns: its ``ccds`` row, the reject detail and its cutouts, nested
RESULT = pa.schema(
    list(schema.CCDS)
    + [pa.field("reject_detail", pa.string()), pa.field("cutouts", pa.list_(pa.struct(_CUTOUT_FIELDS)))]
)


def result_batch(row: dict, result: CcdResult | None) -> pa.RecordBatch:
    """One CCD task's output as a one-row Arrow batch of :data:`RESULT`.

    The cutouts go in as columns built from the result's numpy arrays, so a
    CCD's hundred cutouts cross from Python to Spark as Arrow buffers, not as
    a hundred pickled tuples.
    """
    n = result.n_sampled if result is not None else 0
    if n:
        columns = dict(
            source_index=result.source_index,
            x=result.x,
            y=result.y,
            flux=result.flux,
            weight=np.full(n, result.weight, np.float32),
            pixels=result.pixels,
        )
    else:
        columns = {f.name: [] for f in _CUTOUT_FIELDS}
    cutouts = pa.StructArray.from_arrays(
        [pa.array(columns[f.name], f.type) for f in _CUTOUT_FIELDS], fields=_CUTOUT_FIELDS
    )
    arrays = [pa.array([row[f.name]], f.type) for f in RESULT if f.name != "cutouts"]
    arrays.append(pa.ListArray.from_arrays(pa.array([0, n], pa.int32()), cutouts))
    return pa.RecordBatch.from_arrays(arrays, schema=RESULT)


def process_tasks(batches, cfg: IngestConfig):
    """``mapInArrow`` body: each task (a JSON string) read, processed and yielded as a result batch."""
    for batch in batches:
        for text in batch.column("task").to_pylist():
            yield result_batch(*_ccd_task(json.loads(text), cfg))


WINDOWS_PER_EXPOSURE = 2  # the central CCD may be dead: its neighbour's window stands in


def window_hdus(scan: FileScan, n: int = WINDOWS_PER_EXPOSURE) -> list[int]:
    """The HDUs that keep a full-resolution window for the galleries: the ``n`` CCDs nearest the
    focal-plane centre, nearest first (the report shows the first one that is not dead).
    """
    placed = [h for h in scan.hdus if h.ccd_row >= 0 and h.ccd_col >= 0]
    if not placed:
        return [h.hdu_index for h in scan.hdus[:n]]
    rows = [h.ccd_row for h in placed]
    cols = [h.ccd_col for h in placed]
    cy, cx = (min(rows) + max(rows)) / 2, (min(cols) + max(cols)) / 2
    ranked = sorted(placed, key=lambda h: ((h.ccd_row - cy) ** 2 + (h.ccd_col - cx) ** 2, h.hdu_index))
    return [h.hdu_index for h in ranked[:n]]


def plan_night(
    scans: list[FileScan],
    night: str | None,
    known: dict[tuple[str, str], tuple[str, str]] | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Turn file scans into exposure rows (partial), HDU tasks and rejects.

    An exposure id is unique per camera, whatever night its file claims: a
    file whose id another file of the run has already taken, or one of
    ``known`` (``(camera, exposure_id) -> (night, path)``: what the lake holds
    outside what this run replaces), is a ``duplicate_exposure`` reject.

    Exposures take ``night`` when given, else the night of their header.
    Rejects of files whose night is unknown go to the run's night: ``night``,
    else the most common night of the run's exposures, else the night the run
    started in (a night of nothing but unreadable files is still a
    ``YYYYMMDD`` partition).
    """
    exposures, tasks, rejects = [], [], []
    seen = dict(known or {})
    for scan in scans:
        n = night or scan.night
        if scan.file_reject is None and n is not None:
            key = (scan.meta.get("camera") or "", scan.exposure_id)
            if key in seen:
                other_night, other_path = seen[key]
                scan.file_reject = Reject(
                    "duplicate_exposure",
                    f"exposure {scan.exposure_id} is also {other_path} (night {other_night})",
                )
            else:
                seen[key] = (n, scan.path)
        if scan.file_reject is None and n is None:
            scan.file_reject = Reject(
                "bad_header", "no DATE-OBS or MJD-OBS to place it in a night; give --night"
            )
        if scan.file_reject is not None:
            rejects.append(scan.file_reject.row(n, scan.path))
            rejects.extend(r.row(n, scan.path) for r in scan.rejects)
            continue
        exposures.append(
            dict(
                night=n,
                exposure_id=scan.exposure_id,
                path=scan.path,
                n_hdus=len(scan.hdus) + len(scan.rejects),
                hdu_reject_reasons=[r.reason for r in scan.rejects],
                **scan.meta,
            )
        )
        rejects.extend(r.row(n, scan.path) for r in scan.rejects)
        central = window_hdus(scan)
        for hdu in scan.hdus:
            tasks.append(
                dict(
                    path=scan.path,
                    night=n,
                    exposure_id=scan.exposure_id,
                    window=hdu.hdu_index in central,
                    **asdict(hdu),
                )
            )
    run_night = night or (Counter(e["night"] for e in exposures).most_common(1) or [(_night_now(), 0)])[0][0]
    for r in rejects:
        r["night"] = r["night"] or run_night
    return exposures, tasks, rejects


def _night_now() -> str:
    from astropy.time import Time

    return night_of(mjd=Time.now().mjd)


def finish_exposures(exposures: list[dict], ccds: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Exposure rows with their CCD counts and status; exposures without a usable CCD become rejects."""
    per_exp = (
        ccds.groupby(["night", "exposure_id"]).agg(
            n_used=("reject_reason", lambda s: int(s.isna().sum())),
            n_rej=("reject_reason", lambda s: int(s.notna().sum())),
            n_dead=("dead", "sum"),
            n_detected=("n_detected", "sum"),
            n_cutouts=("n_sampled", "sum"),
        )
        if len(ccds)
        else pd.DataFrame(columns=["n_used", "n_rej", "n_dead", "n_detected", "n_cutouts"])
    )
    by_exposure = dict(tuple(ccds.groupby(["night", "exposure_id"]))) if len(ccds) else {}
    rows, rejects = [], []
    for e in exposures:
        key = (e["night"], e["exposure_id"])
        s = per_exp.loc[key] if key in per_exp.index else None
        n_used = int(s["n_used"]) if s is not None else 0
        n_rej = (int(s["n_rej"]) if s is not None else 0) + len(e["hdu_reject_reasons"])
        if n_used == 0:
            mine = by_exposure.get(key)
            reasons = e["hdu_reject_reasons"] + (
                list(mine["reject_reason"].dropna()) if mine is not None else []
            )
            rejects.append(file_reason(reasons).row(e["night"], e["path"]))
            continue
        rows.append(
            dict(
                **exposure_qa(by_exposure[key], e.get("exptime"), e.get("zero_point")),
                night=e["night"],
                exposure_id=e["exposure_id"],
                path=e["path"],
                status="ok" if n_rej == 0 else "partial",
                n_hdus=e["n_hdus"],
                n_ccds_used=n_used,
                n_ccds_dead=int(s["n_dead"]),
                n_ccds_rejected=n_rej,
                n_detected=int(s["n_detected"]),
                n_cutouts=int(s["n_cutouts"]),
                **{
                    k: e.get(k)
                    for k in (
                        "exptime",
                        "filter",
                        "mjd_obs",
                        "date_obs",
                        "airmass",
                        "object",
                        "truth_label",
                        "truth_kind",
                        "camera",
                        "zero_point",
                    )
                },
            )
        )
    return pd.DataFrame(rows, columns=schema.EXPOSURES.names), rejects


def ingest(
    spark,
    input_spec: str,
    lake: Lake,
    night: str | None = None,
    cfg: IngestConfig = IngestConfig(),
    camera: str | None = None,
) -> IngestSummary:
    """Ingest the FITS files matching ``input_spec`` into ``lake``.

    Parameters
    ----------
    spark : SparkSession
    input_spec : str
        A file, a directory or a glob; local or fsspec URL.
    lake : Lake
    night : str, optional
        ``YYYYMMDD`` for every file; default: from each file's DATE-OBS/MJD-OBS.
    cfg : IngestConfig
    camera : str, optional
        A profile of ``conf/cameras`` for every file (default: chosen from each file's header).

    Returns
    -------
    IngestSummary

    Raises
    ------
    FileNotFoundError
        Nothing matches ``input_spec``.
    """
    if camera is not None:
        profile_for({}, camera)  # an unknown name fails here, before any work
    return ingest_files(spark, list_inputs(input_spec), lake, night, cfg, camera)


def ingest_files(
    spark,
    files: list[str],
    lake: Lake,
    night: str | None = None,
    cfg: IngestConfig = IngestConfig(),
    camera: str | None = None,
    batch: str | None = None,
) -> IngestSummary:
    """Ingest ``files`` (see :func:`ingest`) and commit them.

    Without ``batch`` the nights they belong to are replaced (a night run
    again gives the same rows).  With ``batch`` (a live night's micro-batch)
    their rows join their nights, replacing only an earlier try of the same
    batch.
    """
    _LOG.info(f"ingest: {len(files)} input files")
    staging = lake.new_staging(replaces=list(TABLES) if batch is None else None)
    scans = scan_files(spark, files, cfg, camera)
    # exposure ids already in the lake are taken, except where this run replaces them: its
    # nights (a night run again) or its own batch's earlier try (a live night's batch run again)
    run_nights = sorted({night or s.night for s in scans} - {None})
    known = lake.committed_exposures(except_nights=run_nights if batch is None else (), except_batch=batch)
    exposures, tasks, rejects = plan_night(scans, night, known)
    stop_on_machine_faults(rejects)
    _LOG.info(
        f"ingest: {len(exposures)} exposures, {len(tasks)} CCD HDUs to process, {len(rejects)} rejects so far"
    )
    results = process_ccds(spark, tasks, cfg)
    try:
        t0 = time.perf_counter()
        summary_cols = [
            f.name for f in RESULT if f.name not in ("cutouts", "thumbnail", "window", "psf_stack")
        ]
        ccd_rows = results.select(*summary_cols).toPandas()  # runs every CCD task once (then cached)
        _LOG.info(f"ingest: processed {len(ccd_rows)} CCDs in {time.perf_counter() - t0:.1f} s")
        exposure_df, rejects, dropped = account(exposures, tasks, ccd_rows, rejects)
        stop_on_machine_faults(rejects)
        t0 = time.perf_counter()
        stage_tables(spark, lake, staging, results, dropped, exposure_df, rejects, n_tasks=len(tasks))
        _LOG.info(f"ingest: tables written in {time.perf_counter() - t0:.1f} s")
        summary = IngestSummary.of(files, exposure_df, ccd_rows, rejects)
        if batch is None:
            lake.commit_nights(staging, list(TABLES), summary.nights, summary={"files": summary.files})
        else:
            lake.commit_batch(staging, list(TABLES), batch, summary={"files": summary.files})
    finally:
        results.unpersist()
    for line in summary.lines():
        _LOG.info(line)
    return summary


def scan_files(spark, files: list[str], cfg: IngestConfig, camera: str | None = None) -> list[FileScan]:
    """Stage 1: the headers of every file, one Spark task per file."""
    min_side = max(cfg.min_ccd_side, 2 * cfg.edge_margin + schema.CUTOUT_SIZE)
    scans = (
        spark.sparkContext.parallelize(files, max(1, len(files)))
        .map(lambda p: scan_file(p, min_side, camera))
        .collect()
    )
    generic = sum(1 for s in scans if s.camera == GENERIC)
    if generic:
        _LOG.info(
            f"ingest: {generic} file(s) from a camera without a profile in conf/cameras: read with the "
            f"generic profile (pixel scale and saturation from their headers only)"
        )
    return scans


#: Spark slices per executor core at least, so that a slow CCD does not leave a core idle
SLICES_PER_CORE = 4
#: pixels a slice holds at most (~27 CCDs of 2048x4612): a Spark task costs ~0.1 s of its own
#: (scheduling, the Python worker's round trip), as much as detection on a 512x512 CCD
PIXELS_PER_SLICE = 256_000_000


def n_slices(tasks: list[dict], cores: int) -> int:
    """How many Spark tasks the CCD tasks are split into: enough to keep every core busy
    (:data:`SLICES_PER_CORE`), few enough that a task's own cost stays small beside its
    CCDs' (:data:`PIXELS_PER_SLICE`), never more than one per CCD."""
    pixels = sum(int(t["height"]) * int(t["width"]) for t in tasks)
    return max(1, min(len(tasks), max(cores * SLICES_PER_CORE, -(-pixels // PIXELS_PER_SLICE))))


def process_ccds(spark, tasks: list[dict], cfg: IngestConfig):
    """Stage 2: the CCD tasks in :func:`n_slices` Spark tasks, each CCD giving its :data:`RESULT`
    row (persisted on disk; unpersist it).

    Each CCD is still read and processed on its own, consecutive CCDs sharing
    a slice; results come back as Arrow batches (``mapInArrow``), one per
    CCD, columnar from the task's numpy arrays to the Parquet files.
    """
    result_schema = schema.spark_schema(RESULT)
    if not tasks:
        return spark.createDataFrame([], result_schema)
    slices = n_slices(tasks, spark.sparkContext.defaultParallelism)
    task_df = spark.sparkContext.parallelize([(json.dumps(t),) for t in tasks], slices).toDF("task string")
    # on disk: an in-memory columnar cache of the nested cutouts costs more than it saves
    return task_df.mapInArrow(lambda batches: process_tasks(batches, cfg), result_schema).persist(
        StorageLevel.DISK_ONLY
    )


def stop_on_machine_faults(rejects: list[dict]) -> None:
    """Stop the run, before anything is committed, if the machine failed to read some input.

    A full disk or a permission is no fault of the file: rejecting it would hide it from every
    later run (``watch`` never reads a rejected file again).  Nothing is written, and the same
    command run again once the machine is fixed reads it.
    """
    faults = [r for r in rejects if r["reason"] == MACHINE_FAULT]
    if faults:
        first = faults[0]
        raise MachineFault(
            f"{len(faults)} input(s) could not be read because of the machine, not the files "
            f"(first: {first['path']}: {first['detail']}); nothing was committed or rejected: "
            "free the disk or fix the permissions and run the same command again"
        )


def account(
    exposures: list[dict], tasks: list[dict], ccd_rows: pd.DataFrame, rejects: list[dict]
) -> tuple[pd.DataFrame, list[dict], list[str]]:
    """Driver-side bookkeeping once the CCDs are processed.

    Returns the exposure rows, every reject row (the scan's, the rejected
    CCDs', and exposures left without a usable CCD), and those exposures as
    ``night/exposure_id``: they were rejected as files, so their CCDs and
    cutouts leave no rows.
    """
    exposure_df, late_rejects = finish_exposures(exposures, ccd_rows)
    rejects = rejects + late_rejects
    path_of = {(t["night"], t["exposure_id"]): t["path"] for t in tasks}
    for r in ccd_rows[ccd_rows["reject_reason"].notna()].itertuples():
        rejects.append(
            Reject(r.reject_reason, r.reject_detail, int(r.hdu_index), r.extname).row(
                r.night, path_of[(r.night, r.exposure_id)]
            )
        )
    dropped = sorted(
        {f"{n}/{e}" for n, e in path_of}
        - {f"{n}/{e}" for n, e in zip(exposure_df["night"], exposure_df["exposure_id"])}
    )
    return exposure_df, rejects, dropped


def stage_tables(
    spark,
    lake: Lake,
    staging: str,
    results,
    dropped: list[str],
    exposure_df: pd.DataFrame,
    rejects: list[dict],
    n_tasks: int,
) -> None:
    """Stage 3: write the four ingest tables under ``staging`` (the lake commits them)."""
    files_per_night = max(1, min(64, n_tasks // 200))  # ~20k cutouts a file at 100 per CCD
    keep = ~F.concat_ws("/", "night", "exposure_id").isin(dropped) if dropped else F.lit(True)
    ccds_df = results.select(*schema.CCDS.names).where(keep)
    cut_fields = [f.name for f in _CUTOUT_FIELDS]
    cutouts_df = (
        results.where(keep)
        .select("night", "exposure_id", "hdu_index", F.explode("cutouts").alias("c"))
        .select("night", "exposure_id", "hdu_index", *[F.col(f"c.{f}").alias(f) for f in cut_fields])
    )
    _write(ccds_df.coalesce(files_per_night), lake, staging, "ccds")
    _write(
        cutouts_df.coalesce(files_per_night).sortWithinPartitions("exposure_id", "hdu_index", "source_index"),
        lake,
        staging,
        "cutouts",
    )
    lake.stage_arrow(staging, "exposures", pa.Table.from_pandas(exposure_df, preserve_index=False))
    lake.stage_arrow(
        staging,
        "rejects",
        pa.Table.from_pandas(pd.DataFrame(rejects, columns=schema.REJECTS.names), preserve_index=False),
    )


def _write(df, lake: Lake, staging: str, table: str) -> None:
    df.write.mode("overwrite").option("compression", "zstd").partitionBy("night").parquet(
        lake.spark_path(staging, table)
    )


def main_summary_exit(summary: IngestSummary) -> int:
    """Exit status of the ingest command: non-zero only when nothing usable was found."""
    if summary.ok + summary.partial == 0:
        print("ingest: no usable exposure among the inputs (see rejects/)", file=sys.stderr)
        return 1
    return 0
