"""Faults of the machine and of the services, not of the data: a disk that fills while a file is
inflated, an MLflow server that goes away during a watched night.  Each is one clear line, and no
input is rejected for it.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
from localcluster import MlflowServer

from desomspark.lake.layout import Lake
from desomspark.registry import RegistryError
from desomspark.stages.ingest import ingest
from desomspark.stages.watch import ChampionsKeeper


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB file system, full after the first megabyte like any disk."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_disk_that_fills_while_a_gzip_file_is_inflated_is_an_error_not_a_reject(
    spark, night_dir, tmp_path, small_tmpfs, config
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = sorted(night_dir.glob("*.fits"))[0]
    with open(source, "rb") as raw, gzip.open(inputs / (source.name + ".gz"), "wb", compresslevel=1) as out:
        shutil.copyfileobj(raw, out)  # 4 MiB inflated: more than the cache's disk holds
    lake = Lake(str(tmp_path / "lake"))
    env = {**os.environ, "TMPDIR": str(small_tmpfs)}  # where the inflated copy is cached
    run = subprocess.run(
        [sys.executable, "-m", "desomspark.cli", "ingest", "--input", str(inputs), "--lake", lake.root, "-q"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("desomspark ingest:")]
    assert "because of the machine" in line and "No space left on device" in line and source.name in line
    assert lake.read("rejects").num_rows == 0 and lake.read("exposures").num_rows == 0
    assert list(small_tmpfs.glob("desomspark-inflated/*.part")) == []  # the half copy is gone
    # the same command once the disk has room: the file was never marked bad
    summary = ingest(spark, str(inputs), lake, cfg=config.ingest)
    assert summary.exposures and lake.read("rejects").num_rows == 0


def test_watch_sorts_on_with_its_champions_while_mlflow_is_down(tmp_path, config, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        cfg = replace(config, mlflow=replace(config.mlflow, tracking_uri=server.uri))
        lake = Lake(str(tmp_path / "lake"))
        keeper = ChampionsKeeper(lake, cfg, first_pause=0.0)  # ask MLflow at every batch
        pair = keeper.current()
        server.stop()
        with caplog.at_level(logging.WARNING):
            assert keeper.current() is pair and keeper.current() is pair
            with pytest.raises(RegistryError, match="MLflow unreachable"):
                ChampionsKeeper(lake, cfg).current()  # a watch that starts during the outage
            server.start()
            again = keeper.current()
        assert (again.desom1.version, again.desom2.version) == (pair.desom1.version, pair.desom2.version)
        said = [r.message for r in caplog.records if r.name == "desomspark.stages.watch"]
        assert len([s for s in said if "MLflow unreachable" in s]) == 1  # once, not per batch
        assert said[-1] == "watch: MLflow answers again"
    finally:
        server.stop()


def test_an_unreachable_server_is_not_a_model_without_arrays(tmp_path, monkeypatch):
    """The console's "no decoded prototypes" only when the model has none; "MLflow unreachable" (503)
    when the server did not answer."""
    import mlflow
    from localcluster import free_port

    from desomspark.registry.record import model_extra

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert model_extra(str(tmp_path)) == {}  # a model registered without extra arrays
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        with pytest.raises(RegistryError, match="MLflow unreachable"):
            model_extra("models:/desom1/1")
    finally:
        mlflow.set_tracking_uri(before)
