"""How a run's staged output joins the lake without losing or doubling another writer's rows.

A run stages its tables under ``_staging/<run>/`` and then commits, holding the lake lock
(:mod:`desomspark.lake.lock`) from the first check to the last move:

1. **reconcile** with what other writers committed since the run looked at the lake:

   * a *night* commit (``ingest``, ``nightly``, ``assign``, ...) replaces whole partitions.  Files
     that appeared in a partition after the run's snapshot (``_SEEN.json``, taken by
     :meth:`Lake.new_staging`) are another writer's -- a ``watch`` micro-batch -- and are kept:
     copied into the staged partition, less the rows of inputs (:data:`schema.ROW_KEY`) the run
     has itself;
   * a *batch* commit adds files to partitions.  Its rows of inputs that another writer already
     committed to that partition are dropped (one writer per input and table);

2. **decide**: ``_COMMIT.json`` is written; before it the lake is untouched, after it the commit
   is rolled forward by whoever takes the lock next (:func:`recover`);

3. **apply**: every step can be repeated.  A night partition is *swapped* in: on Linux the staged
   and the live folder are exchanged in one ``renameat2(RENAME_EXCHANGE)``, so a reader sees the
   old night or the new, never none; elsewhere two renames leave a moment without the night.
   A marker ``_committed-<run>`` inside the partition (hidden from Spark and pyarrow, which skip
   ``_`` names) says the swap happened.

``DESOMSPARK_CRASH_AT=<point>`` kills the process (SIGKILL) at a named point: the tests use it to
show that a commit killed anywhere is finished by the next writer, with no row lost or doubled.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import posixpath
import signal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from desomspark.lake import schema

_LOG = logging.getLogger(__name__)

#: written into a staging folder once its tables are complete: the commit is decided
COMMIT_FILE = "_COMMIT.json"
#: what the run saw of the partitions it will replace, written when its staging folder is made
SEEN_FILE = "_SEEN.json"
#: who made a staging folder (host, pid): the folder of a run that died undecided is removed
OWNER_FILE = "_OWNER.json"


def crash_point(name: str) -> None:
    """Die here, at once and without clean-up, if ``DESOMSPARK_CRASH_AT`` names this point (tests)."""
    if os.environ.get("DESOMSPARK_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _parquet_names(fs, folder: str) -> set[str]:
    if not fs.exists(folder):
        return set()
    return {posixpath.basename(p) for p in fs.ls(folder, detail=False) if p.endswith(".parquet")}


def snapshot(lake, tables: list[str]) -> dict[str, dict[str, list[str]]]:
    """``{table: {night: [parquet file names]}}`` of every night partition of ``tables`` now."""
    seen = {}
    for table in tables:
        seen[table] = {
            night: sorted(_parquet_names(lake.fs, lake._fs_path(lake.path(table, f"night={night}"))))
            for night in lake.nights(table)
        }
    return seen


def _keys(fs, files: list[str], column: str) -> set:
    """The values of ``column`` in parquet ``files``."""
    keys = set()
    for f in files:
        with fs.open(f, "rb") as fh:
            keys.update(pq.read_table(fh, columns=[column]).column(column).to_pylist())
    return keys


def _write_without(fs, source: str, dest: str, column: str, drop: set) -> int:
    """Copy parquet ``source`` to ``dest`` less the rows whose ``column`` is in ``drop``; rows kept."""
    with fs.open(source, "rb") as fh:
        table = pq.read_table(fh)
    if drop:
        table = table.filter(pc.invert(pc.is_in(table.column(column), pa.array(sorted(drop)))))
    if table.num_rows:
        tmp = dest + ".tmp"
        with fs.open(tmp, "wb") as fh:
            pq.write_table(table, fh)
        fs.mv(tmp, dest)
    return table.num_rows


def keep_late_files(lake, staging: str, tables: list[str], nights: list[str]) -> None:
    """Copy into the staged partitions the files other writers committed after the run's snapshot."""
    fs = lake.fs
    seen_path = lake._fs_path(lake.path(staging, SEEN_FILE))
    if not fs.exists(seen_path):
        return
    with fs.open(seen_path, "r") as fh:
        seen = json.load(fh)
    for table in tables:
        column = schema.ROW_KEY[table]
        for night in nights:
            target = lake._fs_path(lake.path(table, f"night={night}"))
            late = sorted(_parquet_names(fs, target) - set(seen.get(table, {}).get(night, [])))
            if not late:
                continue
            staged = lake._fs_path(lake.path(staging, table, f"night={night}"))
            fs.makedirs(staged, exist_ok=True)
            ours = _keys(fs, [posixpath.join(staged, n) for n in _parquet_names(fs, staged)], column)
            kept = sum(
                _write_without(fs, posixpath.join(target, n), posixpath.join(staged, n), column, ours)
                for n in late
            )
            _LOG.warning(
                f"commit: {table} night {night}: kept {kept} row(s) of {len(late)} file(s) that another "
                f"writer committed during this run"
            )


def drop_committed_rows(lake, staging: str, tables: list[str], batch: str) -> None:
    """Drop a batch's staged rows of inputs that another writer has committed to the same night."""
    fs = lake.fs
    mine = f"part-b{batch}-"
    for table in tables:
        column = schema.ROW_KEY[table]
        staged_table = lake._fs_path(lake.path(staging, table))
        if not fs.exists(staged_table):
            continue
        for folder in sorted(fs.ls(staged_table, detail=False)):
            part = posixpath.basename(folder.rstrip("/"))
            if not part.startswith("night="):  # Spark's _SUCCESS and the like
                continue
            target = lake._fs_path(lake.path(table, part))
            others = [posixpath.join(target, n) for n in _parquet_names(fs, target) if not n.startswith(mine)]
            taken = _keys(fs, others, column)
            if not taken:
                continue
            for name in sorted(_parquet_names(fs, folder)):
                path = posixpath.join(folder, name)
                with fs.open(path, "rb") as fh:
                    before = pq.read_metadata(fh).num_rows
                kept = _write_without(fs, path, path + ".kept", column, taken)
                fs.rm(path)
                if kept:
                    fs.mv(path + ".kept", path)
                if kept < before:
                    _LOG.warning(
                        f"commit: batch {batch}: {table} {part}: {before - kept} row(s) dropped, "
                        f"another writer has committed their {column}"
                    )


# --- applying a decided commit ---------------------------------------------------------


def _exchange(a: str, b: str) -> bool:
    """Swap folders ``a`` and ``b`` in one step (Linux ``renameat2``); False where that is not offered."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, a.encode(), at_fdcwd, b.encode(), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), f"{a} <-> {b}")


def _swap_in(lake, staged: str, target: str, old: str) -> None:
    """Make ``staged`` the partition ``target``; the partition it replaces ends at ``staged`` or ``old``."""
    fs = lake.fs
    if fs.exists(target):
        if lake.is_local and _exchange(staged, target):
            return
        fs.mv(target, old, recursive=True)
        crash_point("commit:between-renames")
    fs.makedirs(posixpath.dirname(target), exist_ok=True)
    fs.mv(staged, target, recursive=True)


def apply_nights(lake, staging: str, plan: dict) -> None:
    """Swap each staged night partition in, table by table."""
    fs = lake.fs
    marker = "_committed-" + posixpath.basename(staging)
    for table in plan["tables"]:
        for night in plan["nights"]:
            part = f"night={night}"
            target = lake._fs_path(lake.path(table, part))
            staged = lake._fs_path(lake.path(staging, table, part))
            old = staged + ".old"
            done = staged + ".done"
            if fs.exists(done):
                continue  # this partition was committed before the crash
            if fs.exists(posixpath.join(target, marker)):
                if fs.exists(staged):  # the exchange left the replaced partition here
                    fs.rm(staged, recursive=True)
            elif fs.exists(staged):
                fs.touch(posixpath.join(staged, marker))
                _swap_in(lake, staged, target, old)
                crash_point("commit:after-swap")
                if fs.exists(staged):
                    fs.rm(staged, recursive=True)
            elif fs.exists(target):  # the run has no rows for this night: the night is emptied
                fs.mv(target, old, recursive=True)
            if fs.exists(old):
                fs.rm(old, recursive=True)
            fs.makedirs(posixpath.dirname(done), exist_ok=True)
            fs.touch(done)
            lake.write_json(
                {"table": table, "night": night, **plan["summary"]}, "_nights", table, f"{night}.json"
            )
        crash_point("commit:between-tables")


def apply_batch(lake, staging: str, plan: dict) -> None:
    """Move a batch's staged files into their partitions, replacing its earlier try's files."""
    fs = lake.fs
    prefix = f"part-b{plan['batch']}-"
    for table in plan["tables"]:
        staged_table = lake._fs_path(lake.path(staging, table))
        if not fs.exists(staged_table):
            continue
        for folder in sorted(fs.ls(staged_table, detail=False)):
            part = posixpath.basename(folder.rstrip("/"))
            if not part.startswith("night=") or part.endswith((".done", ".cleared")):
                continue
            target = lake._fs_path(lake.path(table, part))
            cleared = lake._fs_path(lake.path(staging, table, part + ".cleared"))
            if not fs.exists(cleared):  # the earlier try's files go first, once
                for old in _parquet_names(fs, target):
                    if old.startswith(prefix):
                        fs.rm(posixpath.join(target, old))
                fs.makedirs(target, exist_ok=True)
                fs.touch(cleared)
            for name in _parquet_names(fs, folder):
                fs.mv(posixpath.join(folder, name), posixpath.join(target, prefix + name))
                crash_point("commit:inside-moves")
        crash_point("commit:between-tables")


def apply(lake, staging: str) -> None:
    """Carry out a decided commit (the caller holds the lock); every step can be repeated."""
    with lake.fs.open(lake._fs_path(lake.path(staging, COMMIT_FILE)), "r") as fh:
        plan = json.load(fh)
    (apply_batch if "batch" in plan else apply_nights)(lake, staging, plan)
    lake.fs.rm(lake._fs_path(lake.path(staging)), recursive=True)


def decide(lake, staging: str, plan: dict) -> None:
    """Write the commit decision (the caller holds the lock and has reconciled the staged rows)."""
    crash_point("commit:before-decision")
    path = lake._fs_path(lake.path(staging, COMMIT_FILE))
    with lake.fs.open(path + ".tmp", "w") as fh:
        json.dump(plan, fh)
    lake.fs.mv(path + ".tmp", path)  # a decision is whole or absent
    crash_point("commit:after-decision")
