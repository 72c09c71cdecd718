"""The training loop of DESOM, with DistributedDataParallel when there are several ranks.

:func:`fit` is the loop (one process or one DDP rank).  :func:`train_worker`
is what each rank runs, launched by ``TorchDistributor`` (local processes or
Spark executors) or by plain ``torchrun``::

    torchrun --nproc_per_node 2 -m desomspark.desom.train job.json

A rank reads its own row groups of the training sample with
``pyarrow.dataset``; when its shard fits in memory (GPU memory on a GPU) it
is held there as uint8 and batches are drawn on the device, otherwise row
groups stream from storage.  Rank 0 checkpoints every ``checkpoint_every``
iterations; ``resume`` continues from the last checkpoint.

On a GPU the step avoids what would make it wait on the host
(:class:`TrainingStep`): batches are drawn on the device by a device
generator, the SOM temperature is a device tensor, Adam is fused, the
convolutions keep NHWC (``channels_last``, cuDNN's tensor-core layout; on a
CPU, oneDNN's NHWC kernels gave 1.8x the samples/s of NCHW, README), and
with one rank the whole step (forward, loss, backward, Adam) is captured
once in a CUDA graph and replayed, one launch per iteration instead of a few
hundred.  ``precision="bf16"`` runs the autoencoder in bfloat16 autocast.
Losses are read back only at log points.  With several ranks the
step stays eager (DistributedDataParallel's gradient all-reduce is not
captured): graph capture of collectives needs a static graph and NCCL
settings we have not measured.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from desomspark.desom.metrics import map_quality
from desomspark.desom.model import DESOM, ModelSpec, as_input, joint_loss, temperature
from desomspark.errors import UserError
from desomspark.ingest.cutout import decode_uint8
from desomspark.logs import to_stdout

_LOG = logging.getLogger("desomspark.desom.train")  # not __name__: under torchrun this module is __main__


#: the training precisions: float32 throughout, or the autoencoder in bfloat16 autocast (GPU only)
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainJob:
    """Everything a rank needs, picklable and JSON-able (for torchrun)."""

    kind: str  # "desom1" or "desom2"
    sample_path: str  # Parquet folder of the training sample
    checkpoint_path: str  # file rank 0 writes (and reads on resume)
    spec: dict  # model.ModelSpec.to_dict(): the architecture to build
    iterations: int
    batch_size: int  # global batch (split over ranks)
    learning_rate: float
    gamma: float
    t_max: float
    t_min: float
    seed: int = 42
    checkpoint_every: int = 1000
    log_every: int = 100
    resume: bool = False
    use_gpu: bool = False
    max_in_memory_bytes: float = 8e9
    column: str = "pixels"
    cuda_graph: bool = True  # capture the step in a CUDA graph (one GPU rank only)
    precision: str = "fp32"  # "bf16": the autoencoder in bfloat16 autocast on a GPU (SOM distances fp32)
    channels_last: bool = True  # convolutions in NHWC: cuDNN's tensor-core layout, oneDNN's on a CPU

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UserError(f"desom training precision must be one of {PRECISIONS}, not {self.precision!r}")

    def to_json(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(asdict(self), fh)

    @classmethod
    def from_json(cls, path: str) -> "TrainJob":
        with open(path) as fh:
            return cls(**json.load(fh))


# --- data ---------------------------------------------------------------------


class _LocalFiles:
    """The file operations training needs, on local paths, for a host without fsspec (a bare GPU box)."""

    open = staticmethod(open)
    exists = staticmethod(os.path.exists)
    makedirs = staticmethod(os.makedirs)
    mv = staticmethod(os.replace)

    @staticmethod
    def find(root: str) -> list[str]:
        return [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]


def _fs_and_path(path: str):
    try:  # fsspec only for URLs: a bare GPU host may lack it and reads local shards without it
        import fsspec
    except ImportError:
        if "://" in path:
            raise
        return _LocalFiles, path
    fs, _, (p,) = fsspec.get_fs_token_paths(path)
    return fs, p


def row_groups(path: str) -> list[tuple[str, int, int]]:
    """Every (file, row group, rows) of a Parquet folder, in a fixed order."""
    fs, root = _fs_and_path(path)
    files = sorted(f for f in fs.find(root) if f.endswith(".parquet"))
    out = []
    for f in files:
        with fs.open(f, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        out += [(f, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return out


def shard_of(groups: list, rank: int, world: int) -> list:
    """The row groups of ``rank``: every ``world``-th one."""
    return groups[rank::world]


def _read_group(path: str, file: str, index: int, column: str) -> np.ndarray:
    fs, _ = _fs_and_path(path)
    with fs.open(file, "rb") as fh:
        table = pq.ParquetFile(fh).read_row_group(index, columns=[column])
    return column_to_array(table.column(column))


def column_to_array(col) -> np.ndarray:
    """A training column as numpy: cutout bytes -> uint8 (n, 1, 32, 32); lists -> float32 (n, d)."""
    if pa.types.is_binary(col.type) or pa.types.is_fixed_size_binary(col.type):
        return decode_uint8(col)[:, None, :, :]
    return np.asarray(col.to_pylist(), dtype=np.float32)


class Shard:
    """A rank's training data: held in (device) memory, or streamed row group by row group."""

    def __init__(
        self,
        path: str,
        groups: list,
        column: str,
        device: torch.device,
        max_bytes: float,
        generator: torch.Generator,
    ):
        self.path, self.groups, self.column, self.device = path, groups, column, device
        self.generator = generator
        self.n = sum(g[2] for g in groups)
        probe = _read_group(path, *groups[0][:2], column) if groups else np.zeros((0, 1))
        self.item_shape = probe.shape[1:]
        self.dtype = torch.from_numpy(probe[:0]).dtype
        self.bytes = int(probe.nbytes / max(len(probe), 1) * self.n)
        self.in_memory = self.bytes <= max_bytes
        if self.in_memory:
            arrays = [probe] + [_read_group(path, f, i, column) for f, i, _ in groups[1:]]
            self.data = torch.from_numpy(np.concatenate(arrays)).to(device)
            if device.type != "cpu":  # draw indices where the data is: no host copy, no sync per batch
                self.generator = torch.Generator(device=device)
        else:
            self.buffer = torch.empty(0)
            self.order: list[int] = []

    def batch(self, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """``size`` random samples, as stored (uint8 cutouts or float rows); written into ``out`` if given."""
        if self.in_memory:
            idx = torch.randint(self.n, (size,), generator=self.generator, device=self.device)
            return torch.index_select(self.data, 0, idx, out=out) if out is not None else self.data[idx]
        drawn = self._streamed(size)
        return out.copy_(drawn) if out is not None else drawn

    def _streamed(self, size: int) -> torch.Tensor:
        out = []
        while size > 0:
            if len(self.buffer) == 0:
                if not self.order:
                    self.order = torch.randperm(len(self.groups), generator=self.generator).tolist()
                f, i, _ = self.groups[self.order.pop()]
                chunk = torch.from_numpy(_read_group(self.path, f, i, self.column))
                self.buffer = chunk[torch.randperm(len(chunk), generator=self.generator)]
            take = self.buffer[:size]
            self.buffer = self.buffer[size:]
            out.append(take)
            size -= len(take)
        return torch.cat(out).to(self.device)

    def sample(self, size: int) -> torch.Tensor:
        """A fixed evaluation sample (the first rows)."""
        if self.in_memory:
            return self.data[:size]
        f, i, _ = self.groups[0]
        return torch.from_numpy(_read_group(self.path, f, i, self.column)[:size]).to(self.device)


# --- checkpoints ----------------------------------------------------------------


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically (temp file, then rename): a kill never leaves half a checkpoint."""
    fs, p = _fs_and_path(path)
    fs.makedirs(os.path.dirname(p), exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    tmp = p + ".tmp"
    with fs.open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    fs.mv(tmp, p)


def load_checkpoint(path: str) -> dict | None:
    """The checkpoint at ``path`` (tensors and plain values only), or None."""
    fs, p = _fs_and_path(path)
    if not fs.exists(p):
        return None
    with fs.open(p, "rb") as fh:
        return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)


def prototype_checksum(model: DESOM) -> str:
    return hashlib.sha256(model.som.prototypes.detach().cpu().numpy().tobytes()).hexdigest()


# --- the loop -----------------------------------------------------------------------


def scaled_learning_rate(learning_rate: float, batch_size: int, new_batch_size: int) -> float:
    """The learning rate for ``new_batch_size``, given the one tuned at ``batch_size``.

    Square-root scaling, the rule for Adam (Malladi et al. 2022, "On the
    SDEs and scaling rules for adaptive gradient algorithms"): four times the
    batch, twice the rate.
    """
    return learning_rate * math.sqrt(new_batch_size / batch_size)


class TrainingStep:
    """One iteration of DESOM: draw a batch, forward, joint loss, backward, Adam.

    With ``graphed`` (CUDA, one rank) the first :attr:`WARMUP` iterations run
    eagerly on a side stream (cuDNN/cuBLAS set-up and Adam's state happen
    there, as graph capture requires), the next is captured in a CUDA graph,
    and every later one is a replay: the batch is drawn into a static input
    buffer, the temperature written into a static device scalar, then one
    launch runs the whole step.  Every iteration, warm-up included, is a real
    training step, so a graphed run follows the same sequence of batches as
    an eager one.  Returns the step's (loss, reconstruction, SOM loss)
    tensors, read by the caller only at log points.
    """

    WARMUP = 3

    def __init__(
        self,
        net,
        som,
        optimizer: torch.optim.Optimizer,
        shard: Shard,
        batch_size: int,
        gamma: float,
        graphed: bool,
    ):
        self.net, self.som, self.optimizer, self.shard = net, som, optimizer, shard
        self.gamma, self.graphed = gamma, graphed
        self.x = torch.empty((batch_size, *shard.item_shape), dtype=shard.dtype, device=shard.device)
        self.t = torch.zeros((), device=shard.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: tuple[torch.Tensor, ...] = ()
        self.calls = 0

    def _step(self) -> tuple[torch.Tensor, ...]:
        x = as_input(self.x)
        loss, rec, som_loss = joint_loss(self.net(x), x, self.som, self.t, self.gamma)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), rec.detach(), som_loss.detach()

    def __call__(self, t: float) -> tuple[torch.Tensor, ...]:
        self.shard.batch(len(self.x), out=self.x)
        self.t.fill_(t)
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.out
        if not self.graphed:
            return self._step()
        if self.calls <= self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._step()
            torch.cuda.current_stream().wait_stream(side)
            return out
        return self._capture()

    def _capture(self) -> tuple[torch.Tensor, ...]:
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward then makes .grad in the graph's own memory
        try:
            with torch.cuda.graph(graph):
                self.out = self._step()
        except RuntimeError as err:  # a torch or driver that cannot capture: train on, eagerly
            _LOG.warning(f"CUDA graph capture failed ({err}); training continues without graphs")
            self.graphed = False
            return self._step()
        self.graph = graph
        graph.replay()  # capture records the step without running it
        return self.out


def make_optimizer(params, learning_rate: float, device: torch.device, graphed: bool) -> torch.optim.Adam:
    """Adam; fused on a GPU (one kernel for every parameter), and graph-safe when the step is captured."""
    if device.type != "cuda":
        return torch.optim.Adam(params, lr=learning_rate)
    return torch.optim.Adam(params, lr=learning_rate, fused=True, capturable=graphed)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a checkpoint's Adam state, keeping this run's own way of stepping.

    ``load_state_dict`` would also bring back the saved run's ``fused`` and
    ``capturable`` flags: an eager or CPU checkpoint resumed on a GPU would
    then refuse graph capture.  The flags stay this run's, and Adam's step
    counters move to the device where fused and capturable Adam keep them.
    """
    own = [{k: group[k] for k in ("fused", "capturable")} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, flags in zip(optimizer.param_groups, own):
        group.update(flags)
        if flags["fused"] or flags["capturable"]:
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "step" in state:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def fit(model: DESOM, shard: Shard, job: TrainJob, rank: int = 0, world: int = 1) -> dict:
    """Train ``model`` for ``job.iterations`` (DDP-wrapped when ``world > 1``).

    Returns ``{"history": [...], "iteration": n}``; the history holds, every
    ``log_every`` iterations, loss, reconstruction, SOM loss, T, quantization
    and topographic error, samples/s.
    """
    device = shard.device
    model.to(device)
    model.bf16 = job.precision == "bf16" and device.type == "cuda"
    if job.channels_last:  # also on the CPU, where oneDNN's NHWC convolutions ran 1.8x faster
        model.to(memory_format=torch.channels_last)
    state = load_checkpoint(job.checkpoint_path) if job.resume else None
    start, history = _start(model, shard, job, state)
    net = DistributedDataParallel(model) if world > 1 else model
    graphed = job.cuda_graph and device.type == "cuda" and world == 1
    optimizer = make_optimizer(net.parameters(), job.learning_rate, device, graphed)
    if state is not None:
        load_optimizer_state(optimizer, state["optimizer"])
        _LOG.info(f"[rank {rank}] resumed at iteration {start}")
    # batches differ per rank and per (re)start, but are fixed by the seed
    shard.generator.manual_seed(job.seed * 1000 + rank + 7919 * start)
    local_batch = math.ceil(job.batch_size / world)
    step = TrainingStep(net, model.som, optimizer, shard, local_batch, job.gamma, graphed)
    eval_x = as_input(shard.sample(2048))
    t_last, it_last = time.perf_counter(), start

    def checkpoint(iteration: int) -> None:
        if rank == 0:
            save_checkpoint(
                job.checkpoint_path,
                {
                    "spec": job.spec,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "iteration": iteration,
                    "history": history,
                },
            )

    for it in range(start, job.iterations):
        t = temperature(it, job.iterations, job.t_max, job.t_min)
        loss, rec, som_loss = step(t)
        done = it + 1
        if done % job.log_every == 0 or done == job.iterations:
            # .item() waits for the device: the rate is timed after it, before the quality pass
            row = {
                "iteration": done,
                "loss": loss.item(),
                "reconstruction": rec.item(),
                "som_loss": som_loss.item(),
            }
            now = time.perf_counter()
            rate = (done - it_last) * local_batch * world / max(now - t_last, 1e-9)
            row |= {"temperature": t, "samples_per_s": rate} | _map_quality(model, eval_x)
            history.append(row)
            if rank == 0:
                _log_progress(job, row, (job.iterations - done) * local_batch * world / max(rate, 1e-9))
            t_last, it_last = time.perf_counter(), done  # the quality pass is not training time
        if job.checkpoint_every and done % job.checkpoint_every == 0 and done < job.iterations:
            checkpoint(done)
    checkpoint(job.iterations)
    return {"history": history, "iteration": job.iterations}


def _start(model: DESOM, shard: Shard, job: TrainJob, state: dict | None) -> tuple[int, list]:
    """(first iteration, history so far): a resumed run's, else 0 and prototypes from encoded samples."""
    if state is None:
        # every rank builds the same prototypes from rank 0's data: DDP then broadcasts rank 0's anyway
        init_gen = torch.Generator().manual_seed(job.seed)
        model.init_prototypes(as_input(shard.sample(max(4 * model.som.n_nodes, 1024))), init_gen)
        return 0, []
    model.load_state_dict(state["model"])
    return int(state["iteration"]), list(state["history"])


def _map_quality(model: DESOM, eval_x: torch.Tensor) -> dict:
    """The map's quantization and topographic errors on a fixed sample (not timed as training)."""
    quality = map_quality(model, eval_x)
    return {k: quality[k] for k in ("quantization_error", "topographic_error")}


def _log_progress(job: TrainJob, row: dict, eta: float) -> None:
    _LOG.info(
        f"[{job.kind}] it {row['iteration']}/{job.iterations}  {row['samples_per_s']:8.0f} samples/s  "
        f"loss {row['loss']:.5f}  rec {row['reconstruction']:.5f}  som {row['som_loss']:.3f}  "
        f"T {row['temperature']:.3f}  QE {row['quantization_error']:.3f}  "
        f"TE {row['topographic_error']:.3f}  ETA {eta:5.0f} s"
    )


def build_model(job: TrainJob) -> DESOM:
    """The job's model, from its spec."""
    return ModelSpec(**job.spec).build()  # a checkpoint records exactly the spec's fields (to_dict)


def _die_with_parent() -> None:
    """Make this rank die with the process that launched it (Linux).

    A rank left behind by a killed launcher would go on training and write
    the checkpoint that ``--resume`` reads, from under the resumed run.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the call above
        os._exit(1)


def train_worker(job: TrainJob) -> dict:
    """One rank of a (distributed) training run; returns the history and prototype checksums."""
    _die_with_parent()
    to_stdout()  # a rank is its own process: TorchDistributor or torchrun relays its stdout
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_gpu = job.use_gpu and torch.cuda.is_available()
    if job.use_gpu and not use_gpu:
        raise RuntimeError("--gpu was asked for but this worker sees no CUDA device")
    if use_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        # every batch has the same shape: let cuDNN time its algorithms once and keep the fastest
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_gpu else "gloo")
    try:
        torch.manual_seed(job.seed)  # identical initial weights on every rank
        model = build_model(job)
        groups = shard_of(row_groups(job.sample_path), rank, world)
        if not groups:
            raise RuntimeError(f"rank {rank} of {world} has no row group of {job.sample_path}")
        shard = Shard(
            job.sample_path,
            groups,
            job.column,
            device,
            job.max_in_memory_bytes,
            torch.Generator().manual_seed(job.seed + rank),
        )
        if rank == 0:
            _LOG.info(
                f"[{job.kind}] {world} rank(s) on {device}; rank 0 holds {shard.n} samples "
                f"({'in memory' if shard.in_memory else 'streamed'})"
            )
        result = fit(model, shard, job, rank, world)
        checksum = prototype_checksum(model)
        if world > 1:
            sums = [None] * world
            dist.all_gather_object(sums, checksum)
        else:
            sums = [checksum]
        result["prototype_checksums"] = sums
        return result
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # torchrun --nproc_per_node N -m desomspark.desom.train job.json
    out = train_worker(TrainJob.from_json(sys.argv[1]))
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"iteration": out["iteration"], "prototype_checksums": out["prototype_checksums"]}))
