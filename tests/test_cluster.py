"""The cluster path: spark-submit to a standalone master with two workers and an MLflow server, all on
127.0.0.1.

The project reaches the executors as an installed environment (the
interpreter of this virtual environment, ``spark.pyspark.python``), as on a
cluster whose image has desomspark installed.  Marked ``slow``; ``.ci/run``
runs it all the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from localcluster import MlflowServer, StandaloneCluster, spark_env, spark_submit_command

from desomspark.lake.layout import Lake
from desomspark.stages.nightly import nightly

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NIGHT = "20251120"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with StandaloneCluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="2g") as c:
        yield c


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def _submit(cluster, server, job: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = spark_submit_command(
        cluster.master_url,
        str(ROOT / "jobs" / job),
        *args,
        conf={"spark.executor.memory": "1g", "spark.ui.enabled": "false"},
        executor_env={"MLFLOW_TRACKING_URI": server.uri},
    )
    return subprocess.run(cmd, env=server.env(spark_env()), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_reference(spark, night_dir, tmp_path_factory, config):
    """The same night through nightly in local mode (embedded sqlite MLflow)."""
    lake = Lake(str(tmp_path_factory.mktemp("local-lake")))
    nightly(spark, str(night_dir), lake, NIGHT, config)
    return lake


@pytest.fixture(scope="module")
def cluster_lake(cluster, mlflow_server, night_dir, tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("cluster-lake")))
    done = _submit(
        cluster, mlflow_server, "nightly.py", "--lake", lake.root, "--input", str(night_dir), "--night", NIGHT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"nightly {NIGHT}: 12 exposures assigned" in done.stdout
    return lake


def _client(server):
    from mlflow import MlflowClient

    return MlflowClient(server.uri, registry_uri=server.uri)


def _table(lake: Lake, name: str, keys: list[str]) -> pd.DataFrame:
    return lake.read(name).to_pandas().sort_values(keys).reset_index(drop=True)


def test_nightly_on_the_cluster_equals_local_mode(cluster_lake, local_reference, mlflow_server):
    for name, keys in (
        ("exposures", ["exposure_id"]),
        ("ccds", ["exposure_id", "hdu_index"]),
        ("cutouts", ["exposure_id", "hdu_index", "source_index"]),
    ):
        a, b = _table(cluster_lake, name, keys), _table(local_reference, name, keys)
        assert len(a) == len(b) > 0
        assert a.drop(columns=["path"], errors="ignore").equals(b.drop(columns=["path"], errors="ignore")), (
            name
        )
    ha = _table(cluster_lake, "histovectors", ["exposure_id"])
    hb = _table(local_reference, "histovectors", ["exposure_id"])
    assert np.allclose(np.stack(ha["counts"]), np.stack(hb["counts"]))
    aa = _table(cluster_lake, "assignments", ["exposure_id"])
    ab = _table(local_reference, "assignments", ["exposure_id"])
    assert list(aa["cell"]) == list(ab["cell"])
    assert np.allclose(aa["distance"], ab["distance"], atol=1e-5)
    # the models were registered on the server, not in the lake
    assert not (Path(cluster_lake.root) / "mlflow.db").exists()
    client = _client(mlflow_server)
    assert str(client.get_model_version_by_alias("desom1", "champion").version) == "1"


def test_desom1_trains_with_torchdistributor_on_both_workers(cluster, mlflow_server, cluster_lake, tmp_path):
    conf = tmp_path / "small.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "desom1": {
                    "map_shape": [4, 4],
                    "batch_size": 32,
                    "checkpoint_every": 10,
                    "log_every": 5,
                    "sample": 2000,
                }
            }
        )
    )
    done = _submit(
        cluster,
        mlflow_server,
        "train_desom1.py",
        "--lake",
        cluster_lake.root,
        "--conf",
        str(conf),
        "--iterations",
        "20",
        "--processes",
        "2",
        "--cluster",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = _client(mlflow_server)
    version = client.get_model_version_by_alias("desom1", "challenger")
    assert str(version.version) == "2"  # v1 is the default registered by nightly
    ranks = json.loads(
        Path(client.download_artifacts(version.run_id, "ranks.json", str(tmp_path))).read_text()
    )
    ranks = ranks["prototype_checksums"]
    assert len(ranks) == 2 and len(set(ranks)) == 1  # two DDP ranks, one model
    run = client.get_run(version.run_id)
    assert run.data.params["processes"] == "2"


def test_mlflow_down_is_a_clear_error_and_registers_nothing(cluster_lake, mlflow_server):
    before = [v.version for v in _client(mlflow_server).search_model_versions("name='desom2'")]
    mlflow_server.stop()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "desomspark.cli",
                "train-desom2",
                "--lake",
                cluster_lake.root,
                "--master",
                "local[1]",
            ],
            env=mlflow_server.env(spark_env()),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        mlflow_server.start()
    assert done.returncode == 1
    assert f"MLflow at {mlflow_server.uri} is not usable" in done.stderr
    assert "Traceback" not in done.stderr
    after = [v.version for v in _client(mlflow_server).search_model_versions("name='desom2'")]
    assert after == before


def test_a_worker_killed_mid_ingest_loses_and_doubles_nothing(
    cluster, mlflow_server, night_dir, local_reference, tmp_path
):
    lake = Lake(str(tmp_path / "lake"))
    cmd = spark_submit_command(
        cluster.master_url,
        str(ROOT / "jobs" / "ingest.py"),
        "--lake",
        lake.root,
        "--input",
        str(night_dir),
        "--night",
        NIGHT,
        conf={"spark.executor.memory": "1g", "spark.ui.enabled": "false"},
    )
    proc = subprocess.Popen(
        cmd, env=mlflow_server.env(spark_env()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "CCD HDUs to process" in line:
            time.sleep(2.0)  # the CCD stage is running on both workers
            cluster.kill_worker(1)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=600) == 0, "".join(lines)[-3000:]
    assert cluster.alive_workers() == 1
    assert any("Lost executor" in line for line in lines)  # the kill hit a running stage
    assert any("ingest: 12 files: 12 ok" in line for line in lines)
    for name, keys in (
        ("exposures", ["exposure_id"]),
        ("ccds", ["exposure_id", "hdu_index"]),
        ("cutouts", ["exposure_id", "hdu_index", "source_index"]),
    ):
        got, want = _table(lake, name, keys), _table(local_reference, name, keys)
        assert not got.duplicated(keys).any()
        assert got.equals(want), name
