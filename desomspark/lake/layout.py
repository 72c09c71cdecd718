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

A stage writes a night to ``_staging`` first and then *commits* it: the old
partition is removed and the staged one moved in, table by table.  Re-running
a night therefore replaces its rows instead of adding to them.

A live night (``watch``) commits *micro-batches* instead: a batch's files join
their night's partition under names that carry the batch id
(``part-b<id>-*``), and a batch run again (after a crash) replaces the files
of its earlier try, so that each exposure is in the tables once.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds

from desomspark.lake import schema

#: written into a staging folder once its tables are complete: the commit is decided
COMMIT_FILE = "_COMMIT.json"


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

    # --- staging and commit -------------------------------------------------
    def new_staging(self) -> str:
        """A fresh staging folder for one run (relative to the lake).

        Commits that a crash interrupted are finished first (:meth:`recover`).
        """
        self.recover()
        return posixpath.join("_staging", uuid.uuid4().hex)

    def commit_nights(
        self, staging: str, tables: list[str], nights: list[str], summary: dict | None = None
    ) -> None:
        """Replace partition ``night=N`` of each table by the staged one, for every night.

        A table that staged no rows for a night ends with no rows for it (the
        old partition is removed all the same).  The decision to commit is
        written first (``<staging>/_COMMIT.json``): a run that dies before it
        leaves only an invisible staging folder; one that dies after it is
        rolled forward by the next writer (:meth:`recover`), so a night is
        never left with some tables new and others old.
        """
        with self.fs.open(self._fs_path(self.path(staging, COMMIT_FILE)), "w") as fh:
            json.dump({"tables": list(tables), "nights": sorted(set(nights)), "summary": summary or {}}, fh)
        self._apply(staging)

    def commit_batch(self, staging: str, tables: list[str], batch: str, summary: dict | None = None) -> None:
        """Add a micro-batch's staged rows to their nights, replacing any earlier try of the same batch.

        Decided and rolled forward as :meth:`commit_nights` is.
        """
        with self.fs.open(self._fs_path(self.path(staging, COMMIT_FILE)), "w") as fh:
            json.dump({"tables": list(tables), "batch": str(batch), "summary": summary or {}}, fh)
        self._apply(staging)

    def _apply_batch(self, staging: str, plan: dict) -> None:
        """Move a batch's staged files into their partitions; every step can be repeated after a crash."""
        fs = self.fs
        prefix = f"part-b{plan['batch']}-"
        for table in plan["tables"]:
            staged_table = self._fs_path(self.path(staging, table))
            if not fs.exists(staged_table):
                continue
            for folder in sorted(fs.ls(staged_table, detail=False)):
                part = posixpath.basename(folder.rstrip("/"))
                if not part.startswith("night=") or part.endswith((".done", ".cleared")):
                    continue
                target = self._fs_path(self.path(table, part))
                cleared = self._fs_path(self.path(staging, table, part + ".cleared"))
                if not fs.exists(cleared):  # the earlier try's files go first, once
                    if fs.exists(target):
                        for old in fs.ls(target, detail=False):
                            if posixpath.basename(old).startswith(prefix):
                                fs.rm(old)
                    fs.makedirs(target, exist_ok=True)
                    fs.touch(cleared)
                for staged in fs.ls(folder, detail=False):
                    name = posixpath.basename(staged)
                    if name.endswith(".parquet"):
                        fs.mv(staged, posixpath.join(target, prefix + name))
        fs.rm(self._fs_path(self.path(staging)), recursive=True)

    def _apply(self, staging: str) -> None:
        """Carry out a decided commit; every step can be repeated after a crash."""
        fs = self.fs
        with fs.open(self._fs_path(self.path(staging, COMMIT_FILE)), "r") as fh:
            plan = json.load(fh)
        if "batch" in plan:
            self._apply_batch(staging, plan)
            return
        for table in plan["tables"]:
            for night in plan["nights"]:
                part = f"night={night}"
                target = self._fs_path(self.path(table, part))
                staged = self._fs_path(self.path(staging, table, part))
                moved = self._fs_path(self.path(staging, table, part + ".done"))
                if fs.exists(moved):
                    continue  # this partition was committed before the crash
                if fs.exists(target):
                    fs.rm(target, recursive=True)
                if fs.exists(staged):
                    fs.makedirs(posixpath.dirname(target), exist_ok=True)
                    fs.mv(staged, target, recursive=True)
                fs.makedirs(posixpath.dirname(moved), exist_ok=True)
                fs.touch(moved)
                record = self._fs_path(self.path("_nights", table, f"{night}.json"))
                fs.makedirs(posixpath.dirname(record), exist_ok=True)
                with fs.open(record, "w") as fh:
                    json.dump({"table": table, "night": night, **plan["summary"]}, fh)
        fs.rm(self._fs_path(self.path(staging)), recursive=True)

    def recover(self) -> list[str]:
        """Finish commits a crash interrupted; returns their staging folders."""
        base = self._fs_path(self.path("_staging"))
        if not self.fs.exists(base):
            return []
        done = []
        for folder in sorted(self.fs.ls(base, detail=False)):
            rel = posixpath.join("_staging", posixpath.basename(folder.rstrip("/")))
            if self.fs.exists(self._fs_path(self.path(rel, COMMIT_FILE))):
                self._apply(rel)
                done.append(rel)
        return done

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
            exclude_invalid_files=True,
        )

    def committed_exposures(
        self, nights: list[str], except_batch: str | None = None
    ) -> dict[tuple[str, str], str]:
        """``(night, exposure_id) -> path`` of the exposures committed for ``nights``.

        Rows a micro-batch ``except_batch`` committed (an earlier try of the
        batch being run again) are left out.
        """
        nights = [n for n in nights if n in self.nights("exposures")]
        if not nights:
            return {}
        rows = self.dataset("exposures").to_table(
            columns=["night", "exposure_id", "path", "__filename"], filter=ds.field("night").isin(nights)
        )
        mine = f"/part-b{except_batch}-"
        return {
            (n, e): p
            for n, e, p, f in zip(*(rows.column(c).to_pylist() for c in rows.column_names))
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
        dataset = self.dataset(table)
        flt = (
            ds.field("night").isin(nights)
            if nights is not None and table not in schema.UNPARTITIONED
            else None
        )
        if where is not None:
            flt = where if flt is None else flt & where
        cols = columns or schema.TABLES[table].names
        t = dataset.to_table(columns=cols, filter=flt)
        out = schema.TABLES[table]
        return t.cast(pa.schema([out.field(c) for c in cols])) if not columns else t
