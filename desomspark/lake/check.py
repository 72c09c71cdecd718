"""``desomspark check``: is every file of the lake readable, and is every commit finished?

:func:`check_lake` reads every Parquet footer of every table (and checks its columns against
:mod:`desomspark.lake.schema`), the commit records (``_nights/``), the staging folders and the
lock, and compares which nights the tables hold.  :func:`repair` moves unreadable files to
``_quarantine/`` (with the reason beside them), finishes decided commits and removes staging
folders that no run will decide any more.  Both only read the tables' bytes; repairs hold the
lake lock.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from desomspark.lake import schema
from desomspark.lake.commit import COMMIT_FILE
from desomspark.lake.layout import Lake
from desomspark.lake.lock import LOCK_FILE

_LOG = logging.getLogger(__name__)

#: tables one commit writes together: a night in one and not the other is a lost partition
TOGETHER = [("exposures", "ccds")]
#: each later stage and the table it reads: a night not there yet is work still to do
LATER = [("histovectors", "exposures"), ("assignments", "histovectors"), ("verdicts", "assignments")]


@dataclass
class CheckReport:
    """What :func:`check_lake` found; ``problems`` is empty for a healthy lake."""

    files: int = 0
    bad_files: dict[str, str] = field(default_factory=dict)  # path -> why it cannot be read
    bad_records: dict[str, str] = field(default_factory=dict)
    undecided: dict[str, float] = field(default_factory=dict)  # staging folder -> age (s)
    decided: list[str] = field(default_factory=list)  # staging folders with a commit to finish
    missing: list[str] = field(default_factory=list)  # "table night=N (in other)"
    behind: list[str] = field(default_factory=list)  # nights a later stage has not reached
    lock: str | None = None

    @property
    def problems(self) -> list[str]:
        return (
            [f"unreadable file {p}: {why}" for p, why in sorted(self.bad_files.items())]
            + [f"unreadable commit record {p}: {why}" for p, why in sorted(self.bad_records.items())]
            + [f"unfinished commit {s} (check --repair, or any writer, finishes it)" for s in self.decided]
            + [f"missing partition {m}" for m in self.missing]
        )

    def lines(self) -> list[str]:
        out = [f"{self.files} parquet files read"]
        out += self.problems
        out += self.behind
        out += [
            f"undecided staging folder {s}, {age / 3600:.1f} h old (a run in progress, or one that died)"
            for s, age in sorted(self.undecided.items())
        ]
        if self.lock:
            out.append(self.lock)
        out.append("healthy" if not self.problems else f"{len(self.problems)} problem(s)")
        return out


def _footer_problem(lake: Lake, path: str, table: str) -> str | None:
    try:
        with lake.fs.open(path, "rb") as fh:
            found = pq.read_schema(fh)
    except Exception as err:  # noqa: BLE001 - every way a footer can fail is the answer here
        return f"{type(err).__name__}: {err}"
    wanted = {f.name: f.type for f in schema.TABLES[table] if f.name != "night"}
    wrong = [n for n, t in wanted.items() if n in found.names and not found.field(n).type.equals(t)]
    lacking = [n for n in wanted if n not in found.names]
    if lacking or wrong:
        return f"columns missing {lacking} or of another type {wrong}"
    return None


def _table_files(lake: Lake, table: str) -> list[str]:
    base = lake._fs_path(lake.table(table))
    if not lake.fs.exists(base):
        return []
    return sorted(
        p
        for p in lake.fs.find(base)
        if not any(part.startswith((".", "_")) for part in posixpath.relpath(p, base).split("/"))
    )


def check_lake(lake: Lake) -> CheckReport:
    """Read every footer, record, staging folder and the lock of ``lake``."""
    report = CheckReport()
    for table in schema.TABLES:
        for path in _table_files(lake, table):
            report.files += 1
            why = _footer_problem(lake, path, table)
            if why:
                report.bad_files[path] = why
    for path in lake.fs.find(lake._fs_path(lake.path("_nights"))) if lake.exists("_nights") else []:
        try:
            with lake.fs.open(path, "r") as fh:
                json.load(fh)
        except ValueError as err:
            report.bad_records[path] = str(err)
    staging = lake._fs_path(lake.path("_staging"))
    for folder in lake.fs.ls(staging, detail=False) if lake.fs.exists(staging) else []:
        rel = posixpath.join("_staging", posixpath.basename(folder.rstrip("/")))
        if lake.fs.exists(posixpath.join(folder, COMMIT_FILE)):
            report.decided.append(rel)
        elif lake.fs.isdir(folder):
            report.undecided[rel] = time.time() - lake.fs.modified(folder).timestamp()
    for one, other in TOGETHER:
        for a, b in ((one, other), (other, one)):
            report.missing += [
                f"{a} night={n} (in {b})" for n in sorted(set(lake.nights(b)) - set(lake.nights(a)))
            ]
    for table, source in LATER:
        for night in sorted(set(lake.nights(source)) - set(lake.nights(table))):
            report.behind.append(f"night {night} has {source} but no {table} yet")
    if lake.exists(LOCK_FILE):
        with lake.open(LOCK_FILE) as fh:
            report.lock = f"lock held: {fh.read().decode(errors='replace')}"
    return report


def repair(lake: Lake, report: CheckReport, undecided_after_h: float = 24.0) -> list[str]:
    """Quarantine unreadable files, finish decided commits, drop old undecided staging; what was done."""
    done = []
    with lake.lock():
        for path, why in sorted(report.bad_files.items()):
            rel = posixpath.relpath(path, lake._fs_path(lake.root))
            target = lake._fs_path(lake.path("_quarantine", rel))
            lake.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            lake.fs.mv(path, target)
            lake.write_json({"from": rel, "why": why, "at": time.time()}, "_quarantine", rel + ".why.json")
            done.append(f"quarantined {rel} -> _quarantine/{rel} ({why})")
        done += [f"finished the commit of {s}" for s in lake.recover()]
        for rel, age in sorted(report.undecided.items()):
            if age > undecided_after_h * 3600:
                lake.fs.rm(lake._fs_path(lake.path(rel)), recursive=True)
                done.append(f"removed undecided staging folder {rel} ({age / 3600:.1f} h old)")
    for line in done:
        _LOG.warning(f"check --repair: {line}")
    return done
