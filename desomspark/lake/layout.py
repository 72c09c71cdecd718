"""The lake: where each table lives, how a night is committed, how tables are read.

Layout under the lake root (a local path or an fsspec URL)::

    <table>/night=YYYYMMDD/part-*.parquet   exposures, ccds, cutouts, rejects,
                                            histovectors, assignments
    labels/part-*.parquet                   expert cell labels
    exposure_labels/part-*.parquet          expert exposure labels, labels inherited from old maps
    verdicts/night=YYYYMMDD/part-*.parquet  each exposure's decision (desomspark.decide)
    _staging/<run>/<table>/night=...        a run's output before commit
    _nights/<table>/<night>.json            commit record of a night's partition
    mlflow.db, mlartifacts/                 the embedded MLflow store
    checkpoints/, training/                 training state and samples

A stage writes a night to ``_staging`` first and then *commits* it, holding the
lake lock (``_LOCK``, :mod:`desomspark.lake.lock`): the staged partition is
swapped in for the old one, table by table (:mod:`desomspark.lake.commit`).
Re-running a night therefore replaces its rows instead of adding to them, and
keeps what another writer (``watch``) committed to the night meanwhile.

A live night (``watch``) commits *micro-batches* instead: a batch's files join
their night's partition under names that carry the batch id
(``part-b<id>-*``), and a batch run again (after a crash) replaces the files
of its earlier try, so that each exposure is in the tables once.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from desomspark.errors import DesomsparkError
from desomspark.lake import commit, schema
from desomspark.lake.lock import LakeLock, owner_gone
from desomspark.lake.lock import owner as lock_owner

_LOG = logging.getLogger(__name__)

COMMIT_FILE = commit.COMMIT_FILE


class CorruptFile(DesomsparkError):
    """A file of the lake cannot be read (``desomspark check --repair`` quarantines it)."""


@dataclass(frozen=True)
class Batch:
    """A micro-batch of a live night: its id (Spark's batch id) and its exposures as ``night/exposure_id``."""

    id: str
    exposures: tuple[str, ...]

    def spark_filter(self):
        """A Spark condition keeping the batch's exposures (a frame with ``night`` and ``exposure_id``)."""
        from pyspark.sql import functions as F

        return F.concat_ws("/", "night", "exposure_id").isin(list(self.exposures))

    def keep(self, frame):
        """The rows of a pandas frame (``night``, ``exposure_id``) that belong to the batch."""
        return frame[(frame["night"] + "/" + frame["exposure_id"]).isin(self.exposures)]


@dataclass(frozen=True)
class Lake:
    """A lake root.  ``Lake("./lake")``, ``Lake("s3a://bucket/desom")``."""

    root: str

    def __post_init__(self):
        parsed = urlparse(self.root)
        if parsed.scheme in ("", "file"):
            path = parsed.path if parsed.scheme == "file" else self.root
            object.__setattr__(self, "root", os.path.abspath(path))

    # --- locations ---------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return "://" not in self.root

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self.is_local:
            return fsspec.filesystem("file")
        protocol = urlparse(self.root).scheme
        return fsspec.filesystem({"s3a": "s3", "s3n": "s3"}.get(protocol, protocol))

    def path(self, *parts: str) -> str:
        """A location inside the lake; parts that would leave it are refused."""
        for part in parts:
            if part.startswith("/") or ".." in part.split("/"):
                raise ValueError(f"path {part!r} would leave the lake")
        return posixpath.join(self.root, *parts)

    def table(self, name: str) -> str:
        if name not in schema.TABLES:
            raise KeyError(f"unknown table {name!r}")
        return self.path(name)

    def spark_path(self, *parts: str) -> str:
        """The same location as Spark wants it (``file://`` for local paths)."""
        p = self.path(*parts)
        return "file://" + p if self.is_local else p

    def _fs_path(self, p: str) -> str:
        return p if self.is_local else p.split("://", 1)[1]

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self._fs_path(self.path(*parts)))

    def open(self, *parts: str, mode: str = "rb"):
        """Open a file inside the lake (parent folders are made when writing)."""
        p = self._fs_path(self.path(*parts))
        if "w" in mode:
            self.fs.makedirs(posixpath.dirname(p), exist_ok=True)
        return self.fs.open(p, mode)

    def read_json(self, *parts: str):
        with self.open(*parts, mode="r") as fh:
            return json.load(fh)

    def write_json(self, value, *parts: str) -> None:
        with self.open(*parts, mode="w") as fh:
            json.dump(value, fh, indent=1)

    def makedirs(self, *parts: str) -> str:
        p = self.path(*parts)
        self.fs.makedirs(self._fs_path(p), exist_ok=True)
        return p

    # --- staging and commit (desomspark.lake.commit says how) ----------------
    def lock(self, timeout: float = 600.0) -> LakeLock:
        """The commit lock (a context manager); commits take it themselves."""
        return LakeLock(self, timeout=timeout)

    def new_staging(self, replaces: list[str] | None = None) -> str:
        """A fresh staging folder for one run (relative to the lake).

        Commits that a crash interrupted are finished first (:meth:`recover`).  ``replaces``: the
        tables whose nights the run will commit whole; what their partitions hold now is noted,
        so that the commit keeps the files other writers add in the meantime.  Make the folder
        *before* reading what the run is computed from.
        """
        self.recover()
        staging = posixpath.join("_staging", uuid.uuid4().hex)
        self.makedirs(staging)
        self.write_json(lock_owner(), staging, commit.OWNER_FILE)
        if replaces:
            self.write_json(commit.snapshot(self, replaces), staging, commit.SEEN_FILE)
        return staging

    def stage_arrow(self, staging: str, table: str, rows: pa.Table) -> None:
        """Write a small driver-side table under ``staging``, one Parquet file per night.

        ``rows`` has the table's columns in any order (:func:`schema.conform`).  Written with
        pyarrow through the lake's filesystem: a Spark job for a few hundred rows costs more
        than the rows.
        """
        rows = schema.conform(rows, table)
        for night in sorted(set(rows.column("night").to_pylist())):
            part = rows.filter(pc.equal(rows.column("night"), night)).drop_columns(["night"])
            with self.open(staging, table, f"night={night}", "part-00000.parquet", mode="wb") as fh:
                pq.write_table(part, fh, compression="zstd")

    def commit_nights(
        self, staging: str, tables: list[str], nights: list[str], summary: dict | None = None
    ) -> None:
        """Replace partition ``night=N`` of each table by the staged one, for every night.

        A table that staged no rows for a night ends with no rows for it.  Files another writer
        committed to those partitions after the staging folder was made are kept, less the rows
        of inputs the run has too.  The decision to commit is written first
        (``<staging>/_COMMIT.json``): a run that dies before it leaves only an invisible staging
        folder; one that dies after it is rolled forward by the next writer (:meth:`recover`),
        so a night is never left with some tables new and others old.
        """
        nights = sorted(set(nights))
        with self.lock():
            commit.keep_late_files(self, staging, tables, nights)
            plan = {"tables": list(tables), "nights": nights, "summary": summary or {}}
            commit.decide(self, staging, plan)
            commit.apply(self, staging)

    def commit_batch(self, staging: str, tables: list[str], batch: str, summary: dict | None = None) -> None:
        """Add a micro-batch's staged rows to their nights, replacing any earlier try of the same batch.

        Rows of inputs that another writer has already committed to the night are dropped.
        Decided and rolled forward as :meth:`commit_nights` is.
        """
        with self.lock():
            commit.drop_committed_rows(self, staging, tables, str(batch))
            plan = {"tables": list(tables), "batch": str(batch), "summary": summary or {}}
            commit.decide(self, staging, plan)
            commit.apply(self, staging)

    def recover(self) -> list[str]:
        """Finish commits a crash interrupted; returns their staging folders."""
        base = self._fs_path(self.path("_staging"))
        if not self.fs.exists(base):
            return []
        done = []
        with self.lock():
            for folder in sorted(self.fs.ls(base, detail=False)):
                rel = posixpath.join("_staging", posixpath.basename(folder.rstrip("/")))
                if self.fs.exists(self._fs_path(self.path(rel, commit.COMMIT_FILE))):
                    _LOG.warning(f"lake: finishing the commit of {rel}, interrupted earlier")
                    commit.apply(self, rel)
                    done.append(rel)
                elif self.exists(rel, commit.OWNER_FILE):
                    self._drop_if_dead(rel)
        return done

    def _drop_if_dead(self, staging: str) -> None:
        """Remove the undecided staging folder of a run of this host that died (it can never commit)."""
        try:
            owner = self.read_json(staging, commit.OWNER_FILE)
        except (ValueError, FileNotFoundError):  # written half-way, or removed by its run
            return
        if owner_gone(owner):
            _LOG.info(f"lake: removing {staging}, left undecided by a run that died (pid {owner.get('pid')})")
            self.fs.rm(self._fs_path(self.path(staging)), recursive=True)

    # --- reading ------------------------------------------------------------
    def spark_read(self, spark, table: str):
        """A table as a Spark DataFrame, typed by the schema module (``night`` stays a string)."""
        return spark.read.schema(schema.spark_schema(table)).parquet(self.spark_path(table))

    def nights(self, table: str) -> list[str]:
        """Nights present in a table."""
        base = self._fs_path(self.table(table))
        if not self.fs.exists(base):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(base, detail=False)]
        return sorted(n.split("=", 1)[1] for n in names if n.startswith("night="))

    def dataset(self, table: str) -> ds.Dataset:
        """A pyarrow dataset over a table (partition column ``night`` included)."""
        base = self.table(table)
        sch = schema.TABLES[table]
        if table in schema.UNPARTITIONED:
            return ds.dataset(self._fs_path(base), schema=sch, format="parquet", filesystem=self._arrow_fs())
        fields = [f for f in sch if f.name != "night"]
        file_schema = pa.schema(fields)
        part = ds.partitioning(pa.schema([("night", pa.string())]), flavor="hive")
        return ds.dataset(
            self._fs_path(base),
            schema=file_schema.append(pa.field("night", pa.string())),
            format="parquet",
            partitioning=part,
            filesystem=self._arrow_fs(),
        )

    def scan(self, table: str, columns: list[str], where: ds.Expression | None = None) -> pa.Table:
        """Rows of ``table`` as Arrow; a file that cannot be read is a :class:`CorruptFile` naming it.

        (pyarrow could skip such files, but then export, the console and the report would show
        fewer rows than Spark, which fails on them: one answer for every reader.)
        """
        for _ in range(3):
            try:
                return self.dataset(table).to_table(columns=columns, filter=where)
            except FileNotFoundError as err:  # a commit swapped the partition between list and open
                lost = err
            except (pa.ArrowInvalid, OSError) as err:
                lost = err
                break
        raise CorruptFile(
            f"{lost} -- the lake {self.root} has a file that cannot be read; "
            f"run: desomspark check --lake {self.root} --repair"
        ) from lost

    def committed_exposures(
        self, except_nights: list[str] = (), except_batch: str | None = None
    ) -> dict[tuple[str, str], tuple[str, str]]:
        """``(camera, exposure_id) -> (night, path)`` of every exposure committed to the lake.

        An exposure id is unique per camera in the whole lake, whatever night a file claims.
        Left out: the nights ``except_nights`` (a run that replaces them brings their exposures
        again) and the rows a micro-batch ``except_batch`` committed (an earlier try of the
        batch being run again).
        """
        if not self.nights("exposures"):
            return {}
        where = ~ds.field("night").isin(list(except_nights)) if except_nights else None
        rows = self.scan("exposures", ["camera", "night", "exposure_id", "path", "__filename"], where)
        mine = f"/part-b{except_batch}-"
        return {
            (c or "", e): (n, p)
            for c, n, e, p, f in zip(*(rows.column(c).to_pylist() for c in rows.column_names))
            if except_batch is None or mine not in f
        }

    def _arrow_fs(self):
        if self.is_local:
            return None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.fs))

    def read(
        self,
        table: str,
        nights: list[str] | None = None,
        columns: list[str] | None = None,
        where: ds.Expression | None = None,
    ) -> pa.Table:
        """A whole table (or some nights of it, or the rows matching ``where``) as Arrow."""
        if not self.exists(table):
            t = schema.empty_table(table)
            return t.select(columns) if columns else t
        flt = (
            ds.field("night").isin(nights)
            if nights is not None and table not in schema.UNPARTITIONED
            else None
        )
        if where is not None:
            flt = where if flt is None else flt & where
        cols = columns or schema.TABLES[table].names
        t = self.scan(table, cols, flt)
        out = schema.TABLES[table]
        return t.cast(pa.schema([out.field(c) for c in cols])) if not columns else t
