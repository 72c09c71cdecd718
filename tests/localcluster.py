"""A Spark standalone cluster and an MLflow server on 127.0.0.1, for tests, benchmarks and trying the cluster
path.

These are the real servers an operator runs (``spark-class ...Master`` /
``...Worker`` from the pyspark package, ``mlflow server`` with a sqlite
backend), started as child processes and stopped, with everything they
started, when the ``with`` block ends::

    with StandaloneCluster(workers=2, work_dir=tmp) as cluster, MlflowServer(tmp / "mlflow") as mlflow:
        subprocess.run(spark_submit_command(cluster.master_url, "jobs/nightly.py", ...), env=mlflow.env())
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def _wait(
    predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what}: process exited with {proc.returncode}"
                + (f"; log: {log.read_text()[-2000:]}" if log and log.exists() else "")
            )
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(
        f"{what}: not ready after {timeout:.0f} s"
        + (f"; log: {log.read_text()[-2000:]}" if log and log.exists() else "")
    )


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    # a session of its own: stopping it stops the JVM and every process it started
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


def spark_env(extra: dict | None = None) -> dict:
    """Environment of Spark's processes: this interpreter for Python, loopback only."""
    env = dict(os.environ)
    env.update(
        {
            "SPARK_HOME": spark_home(),
            "SPARK_LOCAL_IP": HOST,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
        }
    )
    env.update(extra or {})
    return env


class StandaloneCluster:
    """A standalone master and ``workers`` workers of ``cores`` cores each."""

    def __init__(self, work_dir: str | Path, workers: int = 2, cores: int = 1, memory: str = "2g"):
        self.dir = Path(work_dir)
        self.n_workers, self.cores, self.memory = workers, cores, memory
        self.port, self.ui_port = free_port(), free_port()
        self.master: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.port}"

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.ui_port}/json/", timeout=5) as r:
            return json.load(r)

    def alive_workers(self) -> int:
        return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")

    def __enter__(self) -> "StandaloneCluster":
        self.dir.mkdir(parents=True, exist_ok=True)
        cls = os.path.join(spark_home(), "bin", "spark-class")
        env = spark_env({"SPARK_LOG_DIR": str(self.dir)})
        log = self.dir / "master.log"
        self.master = _start(
            [
                cls,
                "org.apache.spark.deploy.master.Master",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--webui-port",
                str(self.ui_port),
            ],
            log,
            env,
        )
        _wait(lambda: "workers" in self.state(), 60, "spark master", self.master, log)
        for k in range(self.n_workers):
            self.add_worker(k, env)
        _wait(lambda: self.alive_workers() == self.n_workers, 60, "spark workers")
        return self

    def add_worker(self, k: int, env: dict | None = None) -> subprocess.Popen:
        cls = os.path.join(spark_home(), "bin", "spark-class")
        work = self.dir / f"worker{k}"
        work.mkdir(exist_ok=True)
        proc = _start(
            [
                cls,
                "org.apache.spark.deploy.worker.Worker",
                self.master_url,
                "--host",
                HOST,
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--webui-port",
                str(free_port()),
                "--work-dir",
                str(work),
            ],
            self.dir / f"worker{k}.log",
            env or spark_env(),
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, k: int) -> None:
        """SIGKILL a worker and its executor, as when a machine is lost."""
        _stop(self.workers[k], sig=signal.SIGKILL)

    def __exit__(self, *exc) -> None:
        for proc in self.workers:
            _stop(proc)
        if self.master is not None:
            _stop(self.master)


class MlflowServer:
    """``mlflow server`` with a sqlite backend and served artifacts under ``root``."""

    def __init__(self, root: str | Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self, base: dict | None = None) -> dict:
        """An environment whose MLflow client uses this server and fails fast when it is down."""
        env = dict(base if base is not None else os.environ)
        env.update(
            {
                "MLFLOW_TRACKING_URI": self.uri,
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
            }
        )
        return env

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
        self.proc = _start(
            [
                mlflow,
                "server",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            self.root / "server.log",
        )
        _wait(
            lambda: urllib.request.urlopen(f"{self.uri}/health", timeout=5).status == 200,
            120,
            "mlflow server",
            self.proc,
            self.root / "server.log",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def spark_submit_command(
    master: str, script: str, *args: str, conf: dict | None = None, executor_env: dict | None = None
) -> list[str]:
    """``spark-submit`` of one of ``jobs/*.py`` with the project's interpreter on driver and executors."""
    cmd = [
        os.path.join(spark_home(), "bin", "spark-submit"),
        "--master",
        master,
        "--conf",
        f"spark.pyspark.python={sys.executable}",
        "--conf",
        f"spark.pyspark.driver.python={sys.executable}",
    ]
    for key, value in (conf or {}).items():
        cmd += ["--conf", f"{key}={value}"]
    for key, value in (executor_env or {}).items():
        cmd += ["--conf", f"spark.executorEnv.{key}={value}"]
    return cmd + [script, *args]
