"""The one place a SparkSession is built."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from desomspark.config import SparkConfig, conf_dir


def get_spark(
    cfg: SparkConfig = SparkConfig(),
    master: str | None = None,
    app_name: str | None = None,
    quiet: bool = False,
):
    """A SparkSession from the configuration; ``master`` overrides ``cfg.master``.

    ``quiet`` (the command line without ``-v``) keeps Spark's log at ERROR from
    the JVM's start (``conf/log4j2-quiet.properties``), so a command's own
    lines are not buried under start-up warnings; a
    ``spark.driver.extraJavaOptions`` of the configuration wins.

    Under ``spark-submit`` (which starts the JVM first and tells Python its
    gateway port) the master given to spark-submit stands unless ``master`` is
    passed explicitly.  Python workers run this interpreter unless
    ``PYSPARK_PYTHON`` says otherwise: the project is installed in it, and a
    worker that cannot import desomspark fails every task.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name or cfg.app_name)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    master = master or (None if under_submit else cfg.master)
    if master:
        builder = builder.master(master)
    if quiet and not under_submit and "spark.driver.extraJavaOptions" not in cfg.properties:
        builder = builder.config(
            "spark.driver.extraJavaOptions",
            f"-Dlog4j2.configurationFile={conf_dir() / 'log4j2-quiet.properties'}",
        )
    for key, value in cfg.properties.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR" if quiet else "WARN")
    return spark
