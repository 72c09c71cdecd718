"""DESOM-1 training throughput: the real training step fed from cutouts/ vs a bare loop, in one run.

(a) ``train.fit`` on a Shard read from the training sample in the lake
    (Parquet row groups -> uint8 tensor -> batches), time including the read;
(b) the same with the shard streamed row group by row group (as when a
    rank's shard does not fit in memory);
(c) a bare loop: the same model, loss and optimizer over the same cutouts
    already in memory as a float32 tensor.

Prints samples/s and the ratios (a)/(c) (target >= 0.9) and (b)/(c).

With ``--layouts``, instead, ranks x threads on this machine's cores: for
1 rank x 2 threads and 2 ranks x 1 thread, the project's entry point
(``python -m torch.distributed.run --nproc_per_node R -m desomspark.desom.train``,
as TorchDistributor runs it: each rank takes cores / ranks threads) against a
bare loop of the same model, loss and global batch with the data in memory
(R processes, DDP over gloo, T threads each).  samples/s is the median of
the logged windows after the first.
On a CUDA machine it also times the paper's DESOM-1 (25x25, batch 256) for
``--gpu-iterations`` and extrapolates to 100k iterations, with GPU utilisation.

Run: python bench/train.py [--iterations N] [--batch-size B] [--gpu-iterations N] [--layouts]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from desomspark.config import load_config
from desomspark.desom.model import desom1, desom1_spec, joint_loss, temperature
from desomspark.desom.train import Shard, TrainJob, as_input, fit, load_checkpoint, row_groups
from desomspark.evaluation.simulate import simulate_night, small_config
from desomspark.lake.layout import Lake
from desomspark.stages.ingest import ingest
from desomspark.stages.spark import get_spark
from desomspark.stages.train_desom1 import training_sample


def make_sample(tmp: str, cfg) -> str:
    sim = small_config(cfg.simulate, 4, (1024, 1024))
    simulate_night(f"{tmp}/raw", 24, sim, seed=5, progress=False)
    spark = get_spark(cfg.spark, master="local[2]")
    lake = Lake(f"{tmp}/lake")
    ingest(spark, f"{tmp}/raw", lake, night="20251120", cfg=cfg.ingest)
    sample = training_sample(spark, lake, 10**6, seed=1)
    spark.stop()
    return sample.path


def job_for(cfg, path: str, iterations: int, batch: int, tmp: str) -> TrainJob:
    c = cfg.desom1
    return TrainJob(
        kind="desom1",
        sample_path=path,
        checkpoint_path=f"{tmp}/ckpt.pt",
        spec=desom1_spec(c).to_dict(),
        iterations=iterations,
        batch_size=batch,
        learning_rate=c.learning_rate,
        gamma=c.gamma,
        t_max=c.t_max,
        t_min=c.t_min,
        checkpoint_every=0,
        log_every=iterations,
    )


def run_fit(job: TrainJob, max_bytes: float, device: torch.device) -> float:
    torch.manual_seed(0)
    model = desom1(replace(load_config().desom1))
    t = time.perf_counter()
    shard = Shard(
        job.sample_path,
        row_groups(job.sample_path),
        "pixels",
        device,
        max_bytes,
        torch.Generator().manual_seed(0),
    )
    fit(model, shard, job)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return job.iterations * job.batch_size / (time.perf_counter() - t)


def run_bare(job: TrainJob, data: torch.Tensor, device: torch.device) -> float:
    torch.manual_seed(0)
    model = desom1(load_config().desom1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=job.learning_rate)
    gen = torch.Generator().manual_seed(0)
    model.init_prototypes(data[:2500], gen)
    t = time.perf_counter()
    for it in range(job.iterations):
        x = data[torch.randint(len(data), (job.batch_size,), generator=gen).to(device)]
        loss, _, _ = joint_loss(
            model(x), x, model.som, temperature(it, job.iterations, job.t_max, job.t_min), job.gamma
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return job.iterations * job.batch_size / (time.perf_counter() - t)


def run_entry_point(job: TrainJob, ranks: int, tmp: str) -> float:
    """samples/s of the project's entry point on ``ranks`` CPU ranks (torchrun, as in production)."""
    job = replace(job, checkpoint_path=f"{tmp}/entry{ranks}.pt", log_every=max(1, job.iterations // 5))
    job.to_json(f"{tmp}/entry{ranks}.json")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        "-m",
        "desomspark.desom.train",
        f"{tmp}/entry{ranks}.json",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    history = load_checkpoint(job.checkpoint_path)["history"]
    return statistics.median(row["samples_per_s"] for row in history[1:] or history)


def _bare_rank(
    rank: int, world: int, threads: int, job: TrainJob, data: torch.Tensor, port: int, out
) -> None:
    """One rank of the bare loop: DDP over gloo, its share of the global batch, ``threads`` threads."""
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = desom1(load_config().desom1)
    gen = torch.Generator().manual_seed(rank)
    model.init_prototypes(data[:2500], torch.Generator().manual_seed(0))
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(net.parameters(), lr=job.learning_rate)
    local = job.batch_size // world
    windows, t, window = [], time.perf_counter(), max(1, job.iterations // 5)
    for it in range(job.iterations):
        x = data[torch.randint(len(data), (local,), generator=gen)]
        temp = temperature(it, job.iterations, job.t_max, job.t_min)
        loss, _, _ = joint_loss(net(x), x, model.som, temp, job.gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % window == 0:
            now = time.perf_counter()
            windows.append(window * job.batch_size / (now - t))
            t = now
    if rank == 0:
        out.put(statistics.median(windows[1:] or windows))
    if world > 1:
        dist.destroy_process_group()


def run_bare_ranks(job: TrainJob, data: torch.Tensor, ranks: int, threads: int) -> float:
    """samples/s of the bare loop on ``ranks`` processes of ``threads`` threads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_bare_rank, args=(r, ranks, threads, job, data, port, out)) for r in range(ranks)
    ]
    for proc in procs:
        proc.start()
    rate = out.get(timeout=3600)
    for proc in procs:
        proc.join()
    return rate


def layouts(cfg, path: str, args, tmp: str) -> None:
    """Ranks x threads on this machine: the project's entry point against the bare loop, in one run."""
    cores = os.cpu_count() or 1
    job = job_for(cfg, path, args.iterations, args.batch_size, tmp)
    data = as_input(
        Shard(path, row_groups(path), "pixels", torch.device("cpu"), 1e12, torch.Generator()).data
    )
    rows = []
    for ranks in (1, 2):
        threads = max(1, cores // ranks)
        entry = run_entry_point(job, ranks, tmp)
        bare = run_bare_ranks(job, data, ranks, threads)
        rows.append((ranks, threads, entry, bare))
        print(
            f"{ranks} rank(s) x {threads} thread(s): entry point {entry:7.0f} samples/s, "
            f"bare loop {bare:7.0f}, entry / bare = {entry / bare:.3f}   (target >= 0.95)"
        )
    best = max(rows, key=lambda r: r[2])
    print(f"fastest entry point: {best[0]} rank(s) x {best[1]} thread(s)")


class GpuSampler:
    """Mean GPU utilisation (nvidia-smi, every 500 ms) while the block runs."""

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"],
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        values = [float(v) for v in self.proc.communicate()[0].split() if v.strip().isdigit()]
        self.mean = sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--gpu-iterations", type=int, default=2000)
    parser.add_argument("--layouts", action="store_true", help="1 rank x 2 threads vs 2 ranks x 1 thread")
    args = parser.parse_args()
    cfg = load_config()
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    try:
        path = make_sample(tmp, cfg)
        if args.layouts:
            layouts(cfg, path, args, tmp)
            return
        n = sum(g[2] for g in row_groups(path))
        print(
            f"training sample: {n} cutouts in {len(row_groups(path))} row groups; "
            f"{args.iterations} iterations x {args.batch_size}, {torch.get_num_threads()} threads, CPU"
        )
        cpu = torch.device("cpu")
        job = job_for(cfg, path, args.iterations, args.batch_size, tmp)
        shard = Shard(path, row_groups(path), "pixels", cpu, 1e12, torch.Generator())
        data = as_input(shard.data)
        bare = run_bare(job, data, cpu)
        full = run_fit(job, 1e12, cpu)
        streamed = run_fit(job, 1.0, cpu)
        print(f"(a) fit, shard in memory   {full:8.0f} samples/s")
        print(f"(b) fit, shard streamed    {streamed:8.0f} samples/s")
        print(f"(c) bare loop in memory    {bare:8.0f} samples/s")
        print(f"(a)/(c) = {full / bare:.3f}   (target >= 0.9)")
        print(f"(b)/(c) = {streamed / bare:.3f}")
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            gjob = job_for(cfg, path, args.gpu_iterations, 256, tmp)
            with GpuSampler() as sampler:
                rate = run_fit(gjob, 1e12, gpu)
            seconds = 100_000 * 256 / rate
            print(
                f"GPU {torch.cuda.get_device_name()}: {rate:.0f} samples/s -> 100k x 256 iterations "
                f"in {seconds / 60:.1f} min (paper: < 3 h; target <= 10 min); "
                f"mean GPU utilisation {sampler.mean:.0f} %"
            )
        else:
            print("GPU: no CUDA device on this machine")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
