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
