"""Local mode vs a standalone cluster: the same simulated night through ``spark-submit jobs/nightly.py``.

(a) ``--master local[2]`` (one JVM, 2 task slots), embedded sqlite MLflow;
(b) a standalone master + 2 workers of 1 core each on 127.0.0.1 and an MLflow
    server (``tests/localcluster.py``), as an operator runs them.

Both are spark-submit runs of the same job on the same files, timed from
submit to exit (JVM and session start included), with the default models.
Prints seconds, seconds per exposure and the rows of each table, and checks
that both runs give the same cells.  On one 2-core machine the cluster can
only lose (same cores, more JVMs, RPC, an HTTP model registry): the figure
is the cost of the cluster path, not a speed-up.

Run: python bench/cluster.py [--exposures 24] [--ccds 4] [--shape 512 512]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from desomspark.config import load_config
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.lake.layout import Lake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's cluster helpers
from localcluster import MlflowServer, StandaloneCluster, spark_env, spark_submit_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NIGHT = "20251120"
TABLES = ("exposures", "ccds", "cutouts", "rejects", "histovectors", "assignments")


def submit(master: str, lake: Lake, raw: Path, env: dict, executor_env: dict | None = None) -> float:
    cmd = spark_submit_command(
        master,
        str(ROOT / "jobs" / "nightly.py"),
        "--lake",
        lake.root,
        "--input",
        str(raw),
        "--night",
        NIGHT,
        conf={"spark.ui.enabled": "false"},
        executor_env=executor_env,
    )
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{master}: nightly failed\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exposures", type=int, default=24)
    parser.add_argument("--ccds", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=2, default=(512, 512))
    args = parser.parse_args()

    cfg = load_config()
    tmp = Path(tempfile.mkdtemp(prefix="desomspark-cluster-bench-"))
    try:
        raw = tmp / "raw"
        sim = replace(small_config(cfg.simulate, args.ccds, tuple(args.shape)), p_dead_ccd=0.0)
        simulate_night(raw, args.exposures, sim, seed=5, mix="balanced", processes=2, progress=False)
        print(f"night: {args.exposures} exposures of {args.ccds} CCDs {args.shape[0]}x{args.shape[1]}")

        local = Lake(str(tmp / "local"))
        env = spark_env()
        env.pop("MLFLOW_TRACKING_URI", None)
        t_local = submit("local[2]", local, raw, env)

        remote = Lake(str(tmp / "cluster"))
        with (
            StandaloneCluster(tmp / "spark", workers=2, cores=1, memory="3g") as cluster,
            MlflowServer(tmp / "mlflow") as server,
        ):
            t_cluster = submit(
                cluster.master_url,
                remote,
                raw,
                server.env(spark_env()),
                executor_env={"MLFLOW_TRACKING_URI": server.uri},
            )

        rows = {t: (local.read(t).num_rows, remote.read(t).num_rows) for t in TABLES}
        cells_a = (
            local.read("assignments", columns=["exposure_id", "cell"]).to_pandas().sort_values("exposure_id")
        )
        cells_b = (
            remote.read("assignments", columns=["exposure_id", "cell"]).to_pandas().sort_values("exposure_id")
        )
        same = list(cells_a["cell"]) == list(cells_b["cell"])
        print(f"{'':28s}{'local[2]':>12s}{'standalone 2x1':>16s}")
        print(f"{'nightly, seconds':28s}{t_local:12.1f}{t_cluster:16.1f}")
        print(
            f"{'seconds per exposure':28s}{t_local / args.exposures:12.2f}{t_cluster / args.exposures:16.2f}"
        )
        for table, (a, b) in rows.items():
            print(f"{'rows ' + table:28s}{a:12d}{b:16d}")
        print(f"cluster / local time: {t_cluster / t_local:.2f}; same cells for every exposure: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
