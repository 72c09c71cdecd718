"""Crashes while writing the lake: no partial night is left visible, and the next writer finishes a decided
commit."""

from __future__ import annotations

import shutil

import fsspec.implementations.local as local_fs
import pandas as pd
import pytest

from desomspark.lake.layout import COMMIT_FILE, Lake
from desomspark.stages.ingest import ingest

TABLES = {
    "exposures": ["exposure_id"],
    "ccds": ["exposure_id", "hdu_index"],
    "cutouts": ["exposure_id", "hdu_index", "source_index"],
    "rejects": ["path"],
}


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def small_night(night_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("faults-night")
    for p in sorted(night_dir.glob("*.fits"))[:3]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="module")
def reference(spark, small_night, tmp_path_factory, config):
    lake = Lake(str(tmp_path_factory.mktemp("faults-ref")))
    ingest(spark, str(small_night), lake, cfg=config.ingest)
    return {t: _table(lake, t) for t in TABLES}


def _table(lake: Lake, name: str) -> pd.DataFrame:
    return lake.read(name).to_pandas().sort_values(TABLES[name]).reset_index(drop=True)


def test_a_crash_before_the_commit_leaves_nothing_visible(spark, small_night, tmp_path, config, monkeypatch):
    lake = Lake(str(tmp_path / "lake"))

    def crash(*args, **kwargs):
        raise Crash("the driver died after writing the tables")

    monkeypatch.setattr(Lake, "commit_nights", crash)
    with pytest.raises(Crash):
        ingest(spark, str(small_night), lake, cfg=config.ingest)
    monkeypatch.undo()
    for table in TABLES:
        assert lake.read(table).num_rows == 0 and lake.nights(table) == []
    # the staged tables are there, undecided: the next writer leaves them alone
    (staged,) = (tmp_path / "lake" / "_staging").iterdir()
    assert (staged / "cutouts").is_dir() and not (staged / COMMIT_FILE).exists()
    assert Lake(lake.root).recover() == []


def test_a_crash_inside_the_commit_is_rolled_forward(
    spark, small_night, tmp_path, config, reference, monkeypatch
):
    lake = Lake(str(tmp_path / "lake"))
    real_mv, moves = local_fs.LocalFileSystem.mv, []

    def mv_then_crash(self, *args, **kwargs):
        if len(moves) == 2:  # two tables moved in, then the process dies
            raise Crash("killed in the middle of the commit")
        moves.append(args)
        return real_mv(self, *args, **kwargs)

    monkeypatch.setattr(local_fs.LocalFileSystem, "mv", mv_then_crash)
    with pytest.raises(Crash):
        ingest(spark, str(small_night), lake, cfg=config.ingest)
    monkeypatch.undo()
    assert lake.read("exposures").num_rows > 0 and lake.read("cutouts").num_rows == 0  # half committed ...
    recovered = Lake(lake.root).recover()  # ... until the next writer
    assert len(recovered) == 1
    for table in TABLES:
        assert _table(lake, table).equals(reference[table]), table
    assert not any((tmp_path / "lake" / "_staging").iterdir())
    # and a re-run over the recovered night still gives the same rows
    ingest(spark, str(small_night), lake, cfg=config.ingest)
    for table in TABLES:
        assert _table(lake, table).equals(reference[table]), table


@pytest.mark.parametrize("point", ["commit:between-tables", "commit:after-swap"])
def test_ingest_killed_inside_its_commit_equals_a_clean_run_after_the_next_writer(
    spark, small_night, tmp_path, config, reference, point
):
    """A real SIGKILL of ``desomspark ingest`` (the commit hook), over a night it is replacing; the
    next writer finishes the commit, and Spark and pyarrow then read the same rows."""
    import os
    import signal
    import subprocess
    import sys

    from tools import child_env

    from desomspark.lake.check import check_lake

    lake = Lake(str(tmp_path / "lake"))
    ingest(spark, str(small_night), lake, cfg=config.ingest)  # the night, to be replaced
    cmd = [sys.executable, "-m", "desomspark.cli", "ingest", "--input", str(small_night), "--lake", lake.root]
    run = subprocess.run(
        cmd, env=child_env() | {"DESOMSPARK_CRASH_AT": point}, capture_output=True, start_new_session=True
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert lake.exists("_LOCK")  # died holding the lock
    assert len(Lake(lake.root).recover()) == 1 and not lake.exists("_LOCK")
    for table in TABLES:
        assert _table(lake, table).equals(reference[table]), table
        if lake.exists(table):  # (a table with no rows has no folder for Spark to read)
            assert lake.spark_read(spark, table).count() == len(reference[table]), table
    assert check_lake(lake).problems == [] and not os.listdir(lake.path("_staging"))


def test_after_check_repair_spark_and_pyarrow_read_the_same_rows(spark, small_night, tmp_path, config):
    """A truncated part file: Spark fails on it and pyarrow readers name it; ``check --repair``
    quarantines it, and then export's reader and Spark agree."""
    from pathlib import Path

    from desomspark.lake.check import check_lake, repair
    from desomspark.lake.layout import CorruptFile

    lake = Lake(str(tmp_path / "lake"))
    ingest(spark, str(small_night), lake, cfg=config.ingest)
    (bad,) = list(Path(lake.path("ccds")).glob("night=*/part-*.parquet"))[:1]
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CorruptFile, match=bad.name):
        lake.read("ccds")
    report = check_lake(lake)
    assert list(report.bad_files) == [str(bad)]
    repair(lake, report)
    assert check_lake(lake).problems == []
    assert lake.read("ccds").num_rows == lake.spark_read(spark, "ccds").count()
