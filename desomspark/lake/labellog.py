"""Appending to the lake's label logs (``labels/``, ``exposure_labels/``) without ever showing a
reader half a file.

A log entry is written under ``_staging/`` and then renamed into the log's folder: on a local or
network file system the rename is atomic, so a disk that fills or a process that dies mid-write
leaves a stray staging file, never a truncated part that breaks every reader.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from desomspark.lake import schema
from desomspark.lake.layout import Lake


def append(lake: Lake, table: str, rows: list[dict]) -> None:
    """Add ``rows`` (columns of ``table``'s schema) to the log ``table`` as one new part file."""
    if table not in schema.UNPARTITIONED:
        raise ValueError(f"{table} is not a label log")
    if not rows:
        return
    arrow = schema.conform(pa.Table.from_pylist(rows), table)
    now = datetime.now(UTC)
    name = f"part-{now.strftime('%Y%m%dT%H%M%S%f')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    staged = posixpath.join("_staging", f"{table}-{name}")
    with lake.open(staged, mode="wb") as fh:
        pq.write_table(arrow, fh)
    lake.makedirs(table)
    lake.fs.mv(lake._fs_path(lake.path(staged)), lake._fs_path(lake.path(table, name)))
