"""Shared fixtures: a real local Spark session and small simulated nights on disk."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import pytest

from desomspark.config import load_config
from desomspark.evaluation.simulate import simulate_night, small_config

# Spark's Python workers must run the interpreter that has the project
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

#: the small camera of the tests: 4 CCDs of 512x512
TEST_CCDS = 4
TEST_SHAPE = (512, 512)
#: an OBJECT header that would run in a page that did not escape it
HOSTILE_OBJECT = "<script>window.__pwned = 1</script>M31 & co"


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_store(monkeypatch):
    """mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI: a command a test starts must find
    its own lake's store, not the last one this process used.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def config():
    """The default conf, but 4 DESOM-2 draws instead of 8: every map a test trains is chosen among
    draws as the default's is, at half the fits (bench/desom2_draws.py measures the default)."""
    default = load_config()
    return replace(default, desom2=replace(default.desom2, draws=4))


@pytest.fixture(scope="session")
def small_sim(config):
    """Simulation settings of the test camera, no dead CCDs (tests add their own)."""
    return replace(small_config(config.simulate, TEST_CCDS, TEST_SHAPE), p_dead_ccd=0.0)


@pytest.fixture(scope="session")
def spark():
    from desomspark.config import SparkConfig
    from desomspark.stages.spark import get_spark

    cfg = SparkConfig(
        master="local[2]",
        app_name="desomspark-tests",
        properties={
            "spark.sql.shuffle.partitions": "4",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.driver.memory": "2g",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        },
    )
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def night_dir(tmp_path_factory, small_sim):
    """12 balanced exposures (2 of each class), 4 CCDs of 512x512."""
    out = tmp_path_factory.mktemp("night")
    simulate_night(out, 12, small_sim, seed=7, mix="balanced", processes=2, progress=False)
    return out


@pytest.fixture(scope="session")
def airflow_python():
    """The interpreter of the Airflow environment that scripts/install_test_tools.sh builds, if any."""
    from pathlib import Path

    python = Path(__file__).resolve().parents[1] / ".venv-airflow" / "bin" / "python"
    return str(python) if python.exists() else None


@pytest.fixture(scope="session")
def mapped_lake(spark, small_sim, tmp_path_factory, config):
    """A balanced night (36 exposures: enough for purity to tell clusterings apart), one file's OBJECT
    header made hostile, one file not FITS at all, mapped with the default models.  Shared by the report
    and the console, whose tests leave its labels as they found them.
    """
    from astropy.io import fits

    from desomspark.lake.layout import Lake
    from desomspark.stages.ingest import ingest
    from desomspark.stages.nightly import run_assign, run_histovectors

    raw = tmp_path_factory.mktemp("report-raw")
    files = simulate_night(raw, 36, small_sim, seed=21, mix="balanced", processes=2, progress=False)
    fits.setval(files[0], "OBJECT", value=HOSTILE_OBJECT, ext=0)
    (raw / "notes.fits").write_text("an observer's notes saved with the wrong name")
    lake = Lake(str(tmp_path_factory.mktemp("report-lake")))
    ingest(spark, str(raw), lake, cfg=config.ingest)
    run_histovectors(spark, lake, config)
    run_assign(spark, lake, config)
    return lake
