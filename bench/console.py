"""Load check of the console (``desomspark serve``) on a lake of 100,000 exposures.

A small real night is simulated, ingested and mapped with the default models
(once; kept under ``--lake``), then ``--exposures`` synthetic exposures are
added: copies of the real rows under new ids, spread over nights of 1,000,
assigned to cells of the champion map.  The console is started as an
operator would (gunicorn, conf ``console:``), and ``--clients`` concurrent
clients each load the map page and a random cell page ``--rounds`` times.
Printed: latency p50 / p95 / max per page, and the time of the first read
of the lake.

    python bench/console.py --lake .bench/console-lake
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from desomspark import registry
from desomspark.config import load_config
from desomspark.lake import schema
from desomspark.lake.layout import Lake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's helpers
from localcluster import free_port  # noqa: E402

PER_NIGHT = 1000


def build_base(lake: Lake, cfg, work: Path) -> None:
    """A real night of 8 small exposures, ingested and mapped with the default models."""
    from desomspark.evaluation.simulate import simulate_night, small_config
    from desomspark.stages.ingest import ingest
    from desomspark.stages.nightly import run_assign, run_histovectors
    from desomspark.stages.spark import get_spark

    raw = work / "raw"
    simulate_night(
        raw, 8, small_config(cfg.simulate, 4, (512, 512)), seed=5, mix="balanced", processes=2, progress=False
    )
    spark = get_spark(cfg.spark)
    ingest(spark, str(raw), lake, cfg=cfg.ingest)
    run_histovectors(spark, lake, cfg)
    run_assign(spark, lake, cfg)
    spark.stop()


def synthesize(lake: Lake, cfg, n: int, seed: int = 0) -> int:
    """Add ``n`` synthetic exposures (exposures and assignments rows) in nights of PER_NIGHT."""
    real_night = lake.nights("assignments")[0]
    exposures = lake.read("exposures", nights=[real_night]).to_pandas()
    assigned = lake.read("assignments", nights=[real_night]).to_pandas()
    rows, cols = registry.registered(lake, cfg, "desom2").map_shape
    rng = np.random.default_rng(seed)
    # exposures crowd some cells more than others, as a survey's do
    weights = rng.gamma(0.5, size=rows * cols)
    weights /= weights.sum()
    made = 0
    for k in range(-(-n // PER_NIGHT)):
        night = f"2030{1 + k // 28:02d}{1 + k % 28:02d}"
        if night in lake.nights("assignments"):
            made += PER_NIGHT
            continue
        m = min(PER_NIGHT, n - made)
        pick = rng.integers(0, len(exposures), m)
        ids = [f"syn{k:03d}{i:04d}" for i in range(m)]
        e = exposures.iloc[pick].assign(exposure_id=ids, night=night).reset_index(drop=True)
        cell = rng.choice(rows * cols, size=m, p=weights)
        a = assigned.iloc[rng.integers(0, len(assigned), m)].assign(
            exposure_id=ids,
            night=night,
            cell=cell.astype("int32"),
            cell_x=(cell % cols).astype("int32"),
            cell_y=(cell // cols).astype("int32"),
            distance=rng.gamma(2.0, 0.5, m),
            label=None,
        )
        for table, frame in (("exposures", e), ("assignments", a)):
            t = schema.conform(pa.Table.from_pandas(frame, preserve_index=False), table).drop(["night"])
            with lake.open(table, f"night={night}", "part-0.parquet", mode="wb") as fh:
                pq.write_table(t, fh)
        made += m
    return made


def _get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
        assert response.status == 200, url
    return time.perf_counter() - t0


def _client(urls: list[tuple[str, str]]) -> list[tuple[str, float]]:
    """One browser: its page loads one after another on a kept-alive connection.

    ``http.client`` rather than ``requests``: the clients share the server's
    two cores, and a heavier client would add its own time to every figure.
    """
    import http.client
    from urllib.parse import urlparse

    out = []
    first = urlparse(urls[0][1])
    connection = http.client.HTTPConnection(first.hostname, first.port, timeout=120)
    try:
        for page, url in urls:
            t0 = time.perf_counter()
            connection.request("GET", urlparse(url).path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, url
            out.append((page, time.perf_counter() - t0))
    finally:
        connection.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", default=".bench/console-lake")
    parser.add_argument("--exposures", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--conf", default=None, help="YAML merged over conf/default.yaml (e.g. console.workers)"
    )
    args = parser.parse_args()

    cfg = load_config(args.conf)
    lake = Lake(args.lake)
    if not lake.exists("assignments"):
        build_base(lake, cfg, Path(args.lake).with_name(Path(args.lake).name + "-work"))
    synthesize(lake, cfg, args.exposures)
    total = lake.read("assignments", columns=["exposure_id"]).num_rows
    print(f"lake {lake.root}: {total} exposures over {len(lake.nights('assignments'))} nights")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(lake.root) / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "desomspark.cli", "serve", "--lake", lake.root, "--port", str(port)]
        + (["--conf", args.conf] if args.conf else []),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 300
        while True:
            try:
                first = _get(url + "/healthz")
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "serve did not start"
                time.sleep(0.5)
        assigned = lake.read("assignments", columns=["cell_x", "cell_y"]).to_pandas()
        cells = assigned.drop_duplicates().to_numpy()
        # every worker process reads the lake once and renders the map once: the cold start, apart
        warm = [_get(url + "/map") for _ in range(2 * cfg.console.workers)]
        print(
            f"first answer (workers read the lake as they start): {first:.2f} s; first map pages: "
            f"{', '.join(f'{w:.2f}' for w in warm)} s"
        )
        rng = np.random.default_rng(1)
        clients = []
        for _ in range(args.clients):  # each client: the map, a cell, the map, another cell...
            cell = cells[rng.integers(len(cells), size=args.rounds)]
            clients.append(
                [job for x, y in cell for job in (("map", url + "/map"), ("cell", f"{url}/cell/{x}/{y}"))]
            )
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            times = [t for client in pool.map(_client, clients) for t in client]
        wall = time.perf_counter() - t0
        jobs = [job for client in clients for job in client]
        first_touch = len({u for _, u in jobs if "/cell/" in u})
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(
        f"{len(jobs)} page loads by {args.clients} concurrent clients in {wall:.1f} s "
        f"({len(jobs) / wall:.0f} pages/s; server: {cfg.console.workers} gunicorn workers x "
        f"{cfg.console.threads} threads); {first_touch} distinct cell pages, each rendered on first load "
        f"by each worker, then served from its cache"
    )
    print(f"{'page':6s} {'loads':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}")
    for page in ("map", "cell"):
        t = np.array([s for p, s in times if p == page]) * 1000
        print(f"{page:6s} {len(t):6d} {np.percentile(t, 50):8.1f} {np.percentile(t, 95):8.1f} {t.max():8.1f}")


if __name__ == "__main__":
    main()
