"""The one place a SparkSession is built."""
from __future__ import annotations

import os
import sys

from .config import SparkConfig


def get_spark(cfg: SparkConfig = SparkConfig(), master: str | None = None, app_name: str | None = None):
    """A SparkSession from the configuration; ``master`` overrides ``cfg.master``.

    Under ``spark-submit`` (which starts the JVM first and tells Python its
    gateway port) the master given to spark-submit stands unless ``master`` is
    passed explicitly.  Python workers run this interpreter unless
    ``PYSPARK_PYTHON`` says otherwise: the project is installed in it, and a
    worker that cannot import desomspark fails every task.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name or cfg.app_name)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    master = master or (None if under_submit else cfg.master)
    if master:
        builder = builder.master(master)
    for key, value in cfg.properties.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
