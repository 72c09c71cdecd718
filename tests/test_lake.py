"""The lake's commits under a second writer, a lock, a SIGKILL at every commit point and a corrupt
file: no row lost, none doubled, one clear line where something cannot be read.

Writers are separate processes (tests/lakewriter.py) so that a kill is a real SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from desomspark.lake import check, schema
from desomspark.lake.layout import CorruptFile, Lake
from desomspark.lake.lock import LakeBusy, LakeLock

WRITER = str(Path(__file__).with_name("lakewriter.py"))
NIGHT = "20251120"


def write(lake: Lake, *args: str, crash_at: str | None = None, **env: str) -> int:
    full = {**os.environ, **env}
    full.pop("DESOMSPARK_CRASH_AT", None)
    if crash_at:
        full["DESOMSPARK_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, WRITER, lake.root, *args], env=full, check=False).returncode


def rows(lake: Lake, table: str = "exposures") -> pd.DataFrame:
    columns = ["night", "exposure_id"] + (["path"] if table == "exposures" else [])
    return lake.read(table, columns=columns).to_pandas()


def counts(lake: Lake) -> dict[str, dict[str, int]]:
    """Rows per exposure in each table (1 in exposures and 2 in ccds when nothing is lost or doubled)."""
    return {
        t: rows(lake, t)["exposure_id"].value_counts().sort_index().to_dict() for t in ("exposures", "ccds")
    }


def whole(exposures: list[str]) -> dict[str, dict[str, int]]:
    return {"exposures": dict.fromkeys(exposures, 1), "ccds": dict.fromkeys(exposures, 2)}


def test_a_night_commit_keeps_the_batches_another_writer_committed_meanwhile(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert write(lake, "batch", NIGHT, "1", "e1,e2") == 0
    # nightly looks at the night, then watch commits batch 2 (e3 it also read, e4 it did not) ...
    assert write(lake, "night", NIGHT, "e1,e2,e3", LATE_BATCH="2 e3,e4") == 0
    assert counts(lake) == whole(["e1", "e2", "e3", "e4"])
    by = rows(lake).set_index("exposure_id")["path"]
    assert by["e3"] == "night/e3.fits" and by["e4"] == "batch2/e4.fits"  # the night's own row wins
    # ... and a batch committed after the night adds only what the night lacks
    assert write(lake, "batch", NIGHT, "3", "e4,e5") == 0
    assert counts(lake) == whole(["e1", "e2", "e3", "e4", "e5"])
    # a batch run again replaces its earlier try, as before
    assert write(lake, "batch", NIGHT, "3", "e5,e6") == 0
    assert counts(lake) == whole(["e1", "e2", "e3", "e4", "e5", "e6"])


def test_a_reader_never_sees_the_night_missing_while_it_is_replaced(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert write(lake, "night", NIGHT, "e1,e2") == 0
    stop, seen = threading.Event(), []

    def read_all_along():
        while not stop.is_set():
            try:
                seen.append(len(rows(lake)))
            except Exception as err:  # noqa: BLE001 - the test wants to see any failure
                seen.append(err)

    reader = threading.Thread(target=read_all_along)
    reader.start()
    try:
        for _ in range(6):
            assert write(lake, "night", NIGHT, "e1,e2") == 0
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 10 and set(seen) == {2}


def test_the_lock_names_its_owner_and_a_dead_owners_lock_is_broken(tmp_path, caplog):
    lake = Lake(str(tmp_path / "lake"))
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [sys.executable, WRITER, lake.root, "hold", str(ready)], stdin=subprocess.PIPE, text=True
    )
    try:
        while not ready.exists():  # the child says when it holds the lock
            assert holder.poll() is None
            threading.Event().wait(0.05)
        with pytest.raises(LakeBusy, match=f"pid {holder.pid}"):
            with LakeLock(lake, timeout=0.3):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    finally:
        holder.kill()
    with caplog.at_level(logging.WARNING), LakeLock(lake, timeout=5):
        with LakeLock(lake, timeout=0):  # the same process: re-entrant, no wait
            pass
    assert any("broken, its owner" in r.message and str(holder.pid) in r.message for r in caplog.records)
    assert not lake.exists("_LOCK")


#: where a commit can die, for a night commit and for a micro-batch
NIGHT_POINTS = [
    "commit:before-decision",
    "commit:after-decision",
    "commit:after-swap",
    "commit:between-tables",
]
BATCH_POINTS = [
    "commit:before-decision",
    "commit:after-decision",
    "commit:inside-moves",
    "commit:between-tables",
]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_night_commit_killed_at_any_point_is_finished_by_the_next_writer(tmp_path, exchange):
    env = {} if exchange else {"NO_EXCHANGE": "1"}
    points = NIGHT_POINTS + ([] if exchange else ["commit:between-renames"])
    for point in points:
        lake = Lake(str(tmp_path / point.replace(":", "-")))
        assert write(lake, "night", NIGHT, "e1,e2,e3", **env) == 0  # the night as it was
        assert write(lake, "night", NIGHT, "e1,e2,e4", crash_at=point, **env) == -signal.SIGKILL
        lake.recover()  # the next writer (the dead one's lock is broken)
        expected = ["e1", "e2", "e3"] if point == "commit:before-decision" else ["e1", "e2", "e4"]
        assert counts(lake) == whole(expected), point
        assert write(lake, "night", NIGHT, "e1,e2,e4", **env) == 0  # and the run again: the clean result
        assert counts(lake) == whole(["e1", "e2", "e4"]), point
        assert check.check_lake(lake).problems == []


def test_a_batch_killed_at_any_point_is_finished_or_redone_exactly_once(tmp_path):
    for point in BATCH_POINTS:
        lake = Lake(str(tmp_path / point.replace(":", "-")))
        assert write(lake, "batch", NIGHT, "1", "e1,e2") == 0
        assert write(lake, "batch", NIGHT, "2", "e3,e4", crash_at=point) == -signal.SIGKILL
        lake.recover()
        got = counts(lake)
        assert got in (whole(["e1", "e2"]), whole(["e1", "e2", "e3", "e4"])), point
        assert write(lake, "batch", NIGHT, "2", "e3,e4") == 0  # watch runs the batch again
        assert counts(lake) == whole(["e1", "e2", "e3", "e4"]), point


def test_a_corrupt_file_is_named_by_readers_and_check_and_quarantined_by_repair(tmp_path, capsys):
    from desomspark.cli import main

    lake = Lake(str(tmp_path / "lake"))
    assert write(lake, "batch", NIGHT, "1", "e1,e2") == 0
    assert write(lake, "batch", NIGHT, "2", "e3") == 0
    (bad,) = Path(lake.path("ccds", f"night={NIGHT}")).glob("part-b2-*.parquet")
    bad.write_bytes(bad.read_bytes()[:40])  # a disk that filled mid-write
    with pytest.raises(CorruptFile, match=bad.name):
        lake.read("ccds")
    report = check.check_lake(lake)
    assert list(report.bad_files) == [str(bad)] and report.files == 4
    assert main(["check", "--lake", lake.root]) == 1
    assert bad.name in capsys.readouterr().out
    assert main(["check", "--lake", lake.root, "--repair"]) == 0
    out = capsys.readouterr().out
    assert "quarantined" in out and "after repair, healthy" in out
    assert sorted(rows(lake, "ccds")["exposure_id"]) == ["e1", "e1", "e2", "e2"]
    why = json.loads(
        Path(lake.path("_quarantine", "ccds", f"night={NIGHT}", bad.name + ".why.json")).read_text()
    )
    assert why["from"] == f"ccds/night={NIGHT}/{bad.name}"
    # the quarantined rows come back when the batch is run again
    assert write(lake, "batch", NIGHT, "2", "e3") == 0
    assert counts(lake) == whole(["e1", "e2", "e3"])


def test_check_reports_a_lost_partition_and_unfinished_commits(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    assert write(lake, "night", NIGHT, "e1") == 0
    assert write(lake, "night", "20251121", "e2", crash_at="commit:after-decision") == -signal.SIGKILL
    report = check.check_lake(lake)
    assert len(report.decided) == 1 and report.lock and "pid" in report.lock
    lake.fs.rm(lake.path("ccds", f"night={NIGHT}"), recursive=True)
    report = check.check_lake(lake)
    assert f"ccds night={NIGHT} (in exposures)" in report.missing
    assert f"night {NIGHT} has exposures but no histovectors yet" in report.behind  # work to do, not a fault
    check.repair(lake, report)
    assert check.check_lake(lake).decided == [] and "20251121" in lake.nights("ccds")


def test_assign_leaves_nights_of_another_desom1_as_they_are(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from desomspark.stages.assign import mappable_nights

    lake = Lake(str(tmp_path / "lake"))
    vectors = {  # night -> (exposure, DESOM-1 version of one of its histo-vectors)
        "20251120": [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2")],  # vectorised again by v2
        "20251121": [("c", "1"), ("d", "1")],  # by v1 only
        "20251122": [("e", "2"), ("f", "1")],  # half of it
    }
    file_schema = pa.schema([f for f in schema.HISTOVECTORS if f.name != "night"])
    for night, pairs in vectors.items():
        table = pa.Table.from_pylist(
            [
                dict(exposure_id=e, desom1_version=v, n_cutouts=1, n_detected=1.0, counts=[1.0])
                for e, v in pairs
            ],
            schema=file_schema,
        )
        with lake.open("histovectors", f"night={night}", "part-0.parquet", mode="wb") as fh:
            pq.write_table(table, fh)
    with caplog.at_level(logging.WARNING):
        assert mappable_nights(lake, sorted(vectors), "2") == ["20251120"]
    (line,) = [r.message for r in caplog.records if "another DESOM-1" in r.message]
    assert "20251121, 20251122" in line and "desomspark histovectors" in line
    assert mappable_nights(lake, ["20251121"], "2") == ["20251121"]  # none mappable: the caller explains
