"""DESOM-1 training and mapping on a GPU: the project's code against bare loops, in one run.

Made for a bare GPU host whose Python has torch, numpy, pyarrow, pandas and
scikit-learn and nothing else (no Spark, Java, MLflow, sep, astropy or
network): it imports only ``desomspark.desom.model``, ``desomspark.desom.train`` and
``desomspark.desom.mapping`` from this checkout, synthesises its own cutouts and
writes them as a training sample (Parquet, as the lake stores cutouts).

Training (paper configuration: DESOM-1 25x25, batch 256, the sample held in
GPU memory):

(a) the project's entry point, ``python -m torch.distributed.run
    --nproc_per_node 1 -m desomspark.desom.train job.json``, as ``train-desom1
    --gpu`` runs it with the default configuration: CUDA graph, channels_last
    convolutions, fp32, fused Adam, batches drawn on the device; then the
    same with NCHW convolutions, and with the autoencoder in bf16;
(b) the same entry point with ``cuda_graph`` and ``channels_last`` off (eager step);
(c) a bare eager loop: the same model and loss, default Adam, a float
    temperature, indices drawn on the device;
(d) the entry point at batch 1024 (learning rate by the square-root rule).

samples/s is the median over log windows after the first (which holds
start-up, warm-up and capture).  Then loss, quantization and topographic
error after the same iterations: (a) against (b) with the same seed, and each
against itself with another seed -- the noise a graph run must stay within.

Mapping: cutouts (uint8, as stored) to DESOM-1 nodes, 1M cutouts:
a bare forward from pinned host memory against the project's
``mapping.cutout_nodes``, and the histo-vector UDF's per-batch function
``mapping.batch_nodes`` on Arrow batches of cutout bytes.

Run: python bench/gpu_check.py [--quick] [--device cpu] [--json FILE]
(``--quick --device cpu`` is the test suite's smoke run of this script.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, installed or not

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from desomspark.desom.mapping import batch_nodes, cutout_nodes  # noqa: E402
from desomspark.desom.model import DesomInference, ModelSpec, joint_loss, temperature  # noqa: E402
from desomspark.desom.train import (  # noqa: E402
    Shard,
    TrainingStep,
    TrainJob,
    as_input,
    load_checkpoint,
    make_optimizer,
    row_groups,
    scaled_learning_rate,
)

SPEC = ModelSpec("desom1", (25, 25), 160, (1, 32, 32), (32, 64, 128), 512)  # the paper's DESOM-1
LEARNING_RATE, GAMMA, T_MAX, T_MIN = 1e-3, 0.0075, 10.0, 0.5  # conf/default.yaml


# --- data ----------------------------------------------------------------------------


@torch.no_grad()
def synth_cutouts(n: int, device: torch.device, seed: int = 0, chunk: int = 8192) -> np.ndarray:
    """(n, 32, 32) uint8 cutouts normalised as ingest does: an elongated star, sometimes a neighbour,
    noise."""
    gen = torch.Generator(device=device).manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(32.0, device=device), torch.arange(32.0, device=device), indexing="ij"
    )
    out = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)

        def u(lo, hi, m=m):
            return lo + (hi - lo) * torch.rand(m, 1, 1, generator=gen, device=device)

        def star(x0, y0, sigma, q, angle, flux):
            dx, dy = xx - x0, yy - y0
            c, s = torch.cos(angle), torch.sin(angle)
            a, b = (c * dx + s * dy) / sigma, (-s * dx + c * dy) / (sigma / q)
            return flux * torch.exp(-0.5 * (a * a + b * b))

        img = star(u(15, 17), u(15, 17), u(0.8, 3.5), u(0.4, 1.0), u(0, math.pi), u(50, 5000))
        neighbour = (torch.rand(m, 1, 1, generator=gen, device=device) < 0.3).float()
        img += neighbour * star(u(0, 32), u(0, 32), u(0.8, 3.5), u(0.5, 1.0), u(0, math.pi), u(20, 2000))
        img += u(5, 30) * torch.randn(m, 32, 32, generator=gen, device=device) + u(100, 1000)
        flat = img.reshape(m, -1).sort(dim=1).values  # clip to each cutout's [1st, 95th] percentile
        lo, hi = flat[:, int(0.01 * 1023)][:, None, None], flat[:, int(0.95 * 1023)][:, None, None]
        scaled = ((img.clamp(lo, hi) - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        out.append((scaled * 255).round().to(torch.uint8).cpu())
    return torch.cat(out).numpy()


def write_sample(pixels: np.ndarray, path: Path, rows_per_group: int) -> None:
    """The cutouts as a training sample: a ``pixels`` column of 1,024-byte strings."""
    column = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(pixels[0].size), len(pixels), [None, pa.py_buffer(np.ascontiguousarray(pixels))]
    )
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"pixels": column}), path / "part-0.parquet", row_group_size=rows_per_group)


# --- training --------------------------------------------------------------------------


def run_entry_point(
    work: Path,
    name: str,
    sample: Path,
    iterations: int,
    batch: int,
    seed: int,
    gpu: bool,
    graph: bool,
    log_every: int,
    precision: str = "fp32",
    channels_last: bool = True,
) -> dict:
    """Train through ``python -m torch.distributed.run ... -m desomspark.desom.train``; the checkpoint's
    history."""
    job = TrainJob(
        kind="desom1",
        sample_path=str(sample),
        checkpoint_path=str(work / f"{name}.pt"),
        spec=SPEC.to_dict(),
        iterations=iterations,
        batch_size=batch,
        learning_rate=scaled_learning_rate(LEARNING_RATE, 256, batch),
        gamma=GAMMA,
        t_max=T_MAX,
        t_min=T_MIN,
        seed=seed,
        checkpoint_every=0,
        log_every=log_every,
        use_gpu=gpu,
        cuda_graph=graph,
        precision=precision,
        channels_last=channels_last,
    )
    job.to_json(str(work / f"{name}.json"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "desomspark.desom.train",
        str(work / f"{name}.json"),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    history = load_checkpoint(job.checkpoint_path)["history"]
    rates = [row["samples_per_s"] for row in history[1:]] or [history[-1]["samples_per_s"]]
    captured = "CUDA graph capture failed" not in proc.stdout + proc.stderr
    return {
        "name": name,
        "batch": batch,
        "seed": seed,
        "iterations": iterations,
        "wall_s": wall,
        "samples_per_s": statistics.median(rates),
        "final": history[-1],
        "graph": graph and captured,
        "precision": precision,
        "channels_last": channels_last,
        "checkpoint": job.checkpoint_path,
    }


def bare_loop(pixels: torch.Tensor, iterations: int, batch: int, seed: int) -> float:
    """(c): the same model and loss in the plainest loop; samples/s after a warm-up."""
    device = pixels.device
    torch.manual_seed(seed)
    model = SPEC.build().to(device)
    model.init_prototypes(as_input(pixels[: 4 * model.som.n_nodes]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    warm = max(5, iterations // 10)
    for it in range(iterations + warm):
        if it == warm:
            _sync(device)
            t = time.perf_counter()
        x = as_input(pixels[torch.randint(len(pixels), (batch,), device=device)])
        loss, _, _ = joint_loss(model(x), x, model.som, temperature(it, iterations, T_MAX, T_MIN), GAMMA)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return iterations * batch / (time.perf_counter() - t)


#: (label, cudnn.benchmark, bf16 autoencoder, channels_last weights) of the step variants timed in-process
VARIANTS = [
    ("graph, fp32, cuDNN heuristics", False, False, False),
    ("graph, fp32, cudnn.benchmark", True, False, False),
    ("graph, fp32, cudnn.benchmark, channels_last", True, False, True),
    ("graph, bf16 autoencoder, cudnn.benchmark", True, True, False),
    ("graph, bf16 autoencoder, cudnn.benchmark, channels_last", True, True, True),
]


def step_variants(sample: Path, device: torch.device, batch: int, iterations: int) -> dict:
    """samples/s of the project's TrainingStep under each of :data:`VARIANTS`, on the same data."""
    shard = Shard(str(sample), row_groups(str(sample)), "pixels", device, 8e9, torch.Generator())
    graphed = device.type == "cuda"
    out = {}
    for label, benchmark, bf16, channels_last in VARIANTS:
        torch.backends.cudnn.benchmark = benchmark
        torch.manual_seed(0)
        model = SPEC.build().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.bf16 = bf16
        model.init_prototypes(as_input(shard.sample(4 * model.som.n_nodes)))
        optimizer = make_optimizer(model.parameters(), LEARNING_RATE, device, graphed)
        step = TrainingStep(model, model.som, optimizer, shard, batch, GAMMA, graphed)
        for _ in range(TrainingStep.WARMUP + 5):
            step(1.0)
        _sync(device)
        t = time.perf_counter()
        for _ in range(iterations):
            loss = step(1.0)[0]
        loss.item()
        out[label] = iterations * batch / (time.perf_counter() - t)
        print(f"  step variant {label}: {out[label]:9.0f} samples/s", flush=True)
    torch.backends.cudnn.benchmark = False
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- mapping ------------------------------------------------------------------------------


@torch.no_grad()
def bare_forward(model, pinned: torch.Tensor, chunk: int) -> np.ndarray:
    """Nodes straight from a pinned uint8 tensor: copy, scale, forward, nothing else."""
    device = next(model.parameters()).device
    nodes = []
    for s in range(0, len(pinned), chunk):
        x = pinned[s : s + chunk].to(device, non_blocking=True).float().div_(255.0).unsqueeze(1)
        nodes.append(model(x)[:, 0])
    return torch.cat(nodes).round().long().cpu().numpy()


def timed(fn, *args, repeat: int = 3):
    """(result, best seconds) of ``fn(*args)`` over ``repeat`` calls after one warm-up call."""
    out = fn(*args)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return out, best


def mapping_rows(model, pixels: np.ndarray, udf_rows: tuple[int, ...]) -> dict:
    device = next(model.parameters()).device
    chunk = 32768 if device.type == "cuda" else 4096
    pinned = torch.from_numpy(pixels)
    if device.type == "cuda":
        pinned = pinned.pin_memory()
    bare_nodes, bare_s = timed(bare_forward, model, pinned, chunk)
    nodes, project_s = timed(cutout_nodes, model, pixels)
    out = {
        "n": len(pixels),
        "bare_per_s": len(pixels) / bare_s,
        "project_per_s": len(pixels) / project_s,
        "same_nodes": float((nodes == bare_nodes).mean()),
        "udf": [],
    }
    for rows in udf_rows:
        column = pa.array([p.tobytes() for p in pixels[:rows]], pa.binary())  # as Spark sends it
        _, udf_s = timed(batch_nodes, model, pa.RecordBatch.from_arrays([column], names=["pixels"]))
        _, bare_batch_s = timed(bare_forward, model, pinned[:rows], chunk)
        out["udf"].append(
            {"rows": rows, "udf_ms": 1e3 * udf_s, "bare_ms": 1e3 * bare_batch_s, "udf_per_s": rows / udf_s}
        )
    return out


# --- the run ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a few iterations on a few cutouts (smoke run)")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument(
        "--only", help="comma-separated training runs to do (default: all; no step variants then)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.quick:
        n_train, n_map, its, its_big, log_every, batch, udf_rows = 3000, 3000, 6, 3, 3, 32, (1000,)
    else:
        n_train, n_map, its, its_big, log_every, batch, udf_rows = (
            200_000,
            1_000_000,
            5000,
            1500,
            500,
            256,
            (10_000, 50_000),
        )
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {name}; torch {torch.__version__}; DESOM-1 {SPEC.map_shape[0]}x{SPEC.map_shape[1]}",
        flush=True,
    )
    results: dict = {"device": name, "torch": torch.__version__}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    t = time.perf_counter()
    pixels = synth_cutouts(n_train, device)
    write_sample(pixels, work / "sample", rows_per_group=max(1000, n_train // 10))
    print(
        f"{n_train} synthetic cutouts written as a training sample in {time.perf_counter() - t:.1f} s",
        flush=True,
    )

    runs = {}
    try:
        if not args.only:
            results["step_variants"] = step_variants(work / "sample", device, batch, its // 5)
    except Exception as err:
        print(f"  step variants FAILED: {err}", flush=True)
    save(args.json, results)
    plan = [
        ("graph_s42", batch, 42, True, its, "fp32", True),
        ("nchw_s42", batch, 42, True, its, "fp32", False),
        ("bf16_s42", batch, 42, True, its, "bf16", True),
        ("eager_s42", batch, 42, False, its, "fp32", False),
        ("eager_s43", batch, 43, False, its, "fp32", False),
        ("graph_b4", 4 * batch, 42, True, its_big, "fp32", True),
    ]
    if args.only:
        plan = [p for p in plan if p[0] in args.only.split(",")]
    for run_name, b, seed, graph, n_its, precision, channels_last in plan:
        try:
            runs[run_name] = run_entry_point(
                work,
                run_name,
                work / "sample",
                n_its,
                b,
                seed,
                gpu,
                graph and gpu,
                log_every if b == batch else max(1, n_its // 5),
                precision,
                channels_last,
            )
            results.setdefault("partial_runs", {})[run_name] = {
                k: v for k, v in runs[run_name].items() if k != "checkpoint"
            }
            save(args.json, results)
            r = runs[run_name]
            print(
                f"  {run_name}: {r['samples_per_s']:9.0f} samples/s  ({r['wall_s']:.0f} s wall)", flush=True
            )
        except Exception as err:  # one failed row must not cost the others (device time is scarce)
            print(f"  {run_name} FAILED: {err}", flush=True)
    try:
        bare = bare_loop(torch.from_numpy(pixels[:, None]).to(device), its // 2, batch, 42)
    except Exception as err:
        print(f"  bare loop FAILED: {err}", flush=True)
        bare = float("nan")
    results["training"] = {
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "checkpoint"} for k, v in runs.items()},
        "bare_loop_per_s": bare,
    }

    print(f"\ntraining step, DESOM-1 25x25, {n_train} cutouts in {device.type} memory")
    print("| step | batch | samples/s | 100k iterations |\n|---|---|---|---|")

    def line(label, per_s, b):
        minutes = 100_000 * b / per_s / 60 if per_s == per_s and per_s > 0 else float("nan")
        print(f"| {label} | {b} | {per_s:,.0f} | {minutes:.1f} min |")

    labels = {
        "graph_s42": "(a) project entry point as configured (CUDA graph, channels_last, fp32)",
        "nchw_s42": "(a) the same, NCHW convolutions",
        "bf16_s42": "(a) the same, autoencoder in bf16 (precision: bf16)",
        "eager_s42": "(b) project entry point, eager step (cuda_graph and channels_last off)",
        "graph_b4": "(d) project entry point as configured",
    }
    for key, label in labels.items():
        if key in runs:
            line(label, runs[key]["samples_per_s"], runs[key]["batch"])
    line("(c) bare eager loop, same model and loss", bare, batch)
    if "graph_s42" in runs and gpu and not runs["graph_s42"]["graph"]:
        print("NOTE: graph capture failed in (a); it trained eagerly")

    compared = [k for k in ("graph_s42", "nchw_s42", "bf16_s42") if k in runs]
    if "eager_s42" in runs and "eager_s43" in runs:
        print(
            f"\nafter {its} iterations (final log row): each variant vs the eager step with the same seed; "
            "eager with another seed is the noise"
        )
        print(
            "| metric | eager s42 | eager s43 | seed noise | "
            + " | ".join(f"{k} (diff)" for k in compared)
            + " |"
        )
        print("|---" * (4 + len(compared)) + "|")
        results["convergence"] = {}
        for metric in ("loss", "reconstruction", "quantization_error", "topographic_error"):
            e42, e43 = runs["eager_s42"]["final"][metric], runs["eager_s43"]["final"][metric]
            row = {"eager_s42": e42, "eager_s43": e43, "seed_noise": abs(e42 - e43)}
            row |= {k: runs[k]["final"][metric] for k in compared}
            row |= {f"{k}_diff": abs(runs[k]["final"][metric] - e42) for k in compared}
            results["convergence"][metric] = row
            print(
                f"| {metric} | {e42:.5f} | {e43:.5f} | {abs(e42 - e43):.5f} | "
                + " | ".join(f"{row[k]:.5f} ({row[k + '_diff']:.5f})" for k in compared)
                + " |"
            )

    try:
        model = SPEC.build()
        if "graph_s42" in runs:
            model.load_state_dict(load_checkpoint(runs["graph_s42"]["checkpoint"])["model"])
        served = DesomInference(model).to(device).eval()
        reps = -(-n_map // len(pixels))
        mapped = mapping_rows(served, np.concatenate([pixels] * reps)[:n_map], udf_rows)
        results["mapping"] = mapped
        print(f"\nmapping {mapped['n']:,} uint8 cutouts to DESOM-1 nodes on {device.type}")
        print("| path | cutouts/s |\n|---|---|")
        print(f"| bare forward from pinned host memory | {mapped['bare_per_s']:,.0f} |")
        print(f"| project's mapping.cutout_nodes (numpy in, nodes out) | {mapped['project_per_s']:,.0f} |")
        for u in mapped["udf"]:
            print(
                f"| UDF body mapping.batch_nodes, Arrow batch of {u['rows']:,} rows | {u['udf_per_s']:,.0f} "
                f"({u['udf_ms']:.1f} ms per batch; bare forward {u['bare_ms']:.1f} ms) |"
            )
        print(f"same nodes as the bare forward: {mapped['same_nodes']:.4f}")
    except Exception as err:
        print(f"mapping FAILED: {err}", flush=True)
    results.pop("partial_runs", None)
    save(args.json, results)


def save(path: str | None, results: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
