"""Train DESOM-1 on the lake's cutouts and register it (``desomspark train-desom1``).

1. *sample*: a uniform random sample of up to N cutouts over every exposure
   of the lake, fixed by a seed (Spark; each cutout is kept when a hash of
   its key and the seed falls below N / total), written once to
   ``<lake>/training/desom1/<sample id>/`` in small row groups;
2. *train*: ``TorchDistributor`` runs :func:`train.train_worker` on P
   processes (local) or P executor slots (cluster); DDP over gloo or NCCL;
3. *register*: the run's parameters, metric curves, prototype map and the
   model go to MLflow; the model becomes a version of ``desom1`` with alias
   ``challenger``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

from desomspark import registry
from desomspark.config import Config
from desomspark.desom.model import DESOM, DesomInference, desom1_spec
from desomspark.desom.train import TrainJob, build_model, load_checkpoint, scaled_learning_rate, train_worker
from desomspark.errors import UserError
from desomspark.lake.layout import Lake
from desomspark.lake.schema import CUTOUT_SIZE
from desomspark.serve.plots import prototype_map

_LOG = logging.getLogger(__name__)


ROWS_PER_GROUP = 8192  # ~8 MiB of cutouts: enough groups to shard over ranks, large enough to read fast


@dataclass
class TrainingSample:
    path: str
    rows: int
    seed: int
    requested: int
    total_cutouts: int


def training_sample(spark, lake: Lake, n: int, seed: int, min_groups: int = 8) -> TrainingSample:
    """Write (or reuse) the training sample of up to ``n`` cutouts; returns where and how many."""
    cutouts = lake.spark_read(spark, "cutouts")
    total = cutouts.count()
    if total == 0:
        raise UserError(f"the lake {lake.root} has no cutouts: run ingest first")
    nights = ",".join(lake.nights("cutouts"))
    sample_id = f"n{n}-seed{seed}-{zlib.crc32(f'{nights}/{total}'.encode()):08x}"
    rel = f"training/desom1/{sample_id}"
    if lake.exists(rel, "_SAMPLE.json"):  # written last: the sample is complete
        return TrainingSample(**lake.read_json(rel, "_SAMPLE.json"))
    fraction = min(1.0, n / total)
    # a uniform number in [0, 1) per cutout, fixed by its key and the seed
    u = F.xxhash64("exposure_id", "hdu_index", "source_index", F.lit(seed)).bitwiseAND(
        F.lit(0x7FFFFFFF)
    ) / F.lit(float(2**31))
    chosen = cutouts.where(u < F.lit(fraction)).select(
        "night", "exposure_id", "hdu_index", "source_index", "pixels"
    )
    rows = chosen.count()
    files = max(min_groups, math.ceil(rows / ROWS_PER_GROUP))
    (
        chosen.repartition(files, "exposure_id", "hdu_index", "source_index")
        .sortWithinPartitions("exposure_id", "hdu_index", "source_index")
        .write.mode("overwrite")
        .option("parquet.block.size", ROWS_PER_GROUP * 1100)
        .parquet(lake.spark_path(rel))
    )
    sample = TrainingSample(
        path=lake.path(rel), rows=int(rows), seed=seed, requested=n, total_cutouts=int(total)
    )
    lake.write_json(asdict(sample), rel, "_SAMPLE.json")
    return sample


def _count(n: int) -> str:
    """100000 -> '100k' (run names)."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _job(
    cfg: Config, sample: TrainingSample, lake: Lake, iterations: int, batch_size: int, resume: bool, gpu: bool
) -> TrainJob:
    c = cfg.desom1
    return TrainJob(
        kind="desom1",
        sample_path=sample.path,
        checkpoint_path=lake.path("checkpoints/desom1/last.pt"),
        spec=desom1_spec(c).to_dict(),
        iterations=iterations,
        batch_size=batch_size,
        # the configured rate is tuned for the configured batch; --batch-size rescales it
        learning_rate=scaled_learning_rate(c.learning_rate, c.batch_size, batch_size),
        gamma=c.gamma,
        t_max=c.t_max,
        t_min=c.t_min,
        seed=c.seed,
        checkpoint_every=c.checkpoint_every,
        log_every=c.log_every,
        resume=resume,
        use_gpu=gpu,
        max_in_memory_bytes=c.max_in_memory_bytes,
        cuda_graph=c.cuda_graph,
        channels_last=c.channels_last,
        precision=c.precision,
    )


def run_distributed(job: TrainJob, processes: int, local_mode: bool = True) -> dict:
    """Run :func:`desomspark.desom.train.train_worker` on ``processes`` ranks with TorchDistributor."""
    from pyspark.ml.torch.distributor import TorchDistributor  # pyspark.ml loads only when training

    wanted = logging.getLogger("TorchDistributor").level
    distributor = TorchDistributor(num_processes=processes, local_mode=local_mode, use_gpu=job.use_gpu)
    if wanted:  # the distributor sets its logger to INFO; the command line's level (-v or not) stands
        distributor.logger.setLevel(wanted)
    return distributor.run(train_worker, job)


@dataclass
class Desom1Plan:
    """Prepared training: the sample, the job the ranks run, and the run it resumes (if any)."""

    sample: TrainingSample
    job: TrainJob
    nights: list[str]
    run_id: str | None = None


RUN_FILE = "checkpoints/desom1/run.json"  # the run under way: what --resume continues


def plan_training(
    spark,
    lake: Lake,
    cfg: Config,
    iterations: int | None,
    processes: int,
    gpu: bool,
    sample_size: int | None,
    resume: bool,
    batch_size: int | None,
) -> Desom1Plan:
    """Prepare: the training sample (written once) and the job, or those of the run ``--resume`` continues."""
    c = cfg.desom1
    iterations, previous = iterations or c.iterations, None
    if resume:
        if not lake.exists(RUN_FILE):
            raise UserError("--resume: no interrupted DESOM-1 run in this lake")
        previous = lake.read_json(RUN_FILE)
        sample = TrainingSample(**previous["sample"])
        iterations, batch_size = previous["iterations"], previous["batch_size"]
    else:
        sample = training_sample(spark, lake, sample_size or c.sample, c.seed, min_groups=max(8, processes))
    _LOG.info(f"train-desom1: sample of {sample.rows} cutouts (of {sample.total_cutouts}) at {sample.path}")
    job = _job(cfg, sample, lake, iterations, batch_size or c.batch_size, resume, gpu)
    return Desom1Plan(sample, job, lake.nights("cutouts"), previous and previous["run_id"])


def fit_desom1(job: TrainJob, processes: int, cluster: bool) -> tuple[DESOM, dict]:
    """Fit: DDP on ``processes`` ranks; the trained model (from the last checkpoint) and the ranks' result."""
    result = run_distributed(job, processes, local_mode=not cluster)
    model = build_model(job)
    model.load_state_dict(load_checkpoint(job.checkpoint_path)["model"])
    return model.eval(), result


def record_inputs(lake: Lake, cfg: Config, plan: Desom1Plan, run_id: str, processes: int) -> None:
    """A new run's settings and data (a resumed run has them already)."""
    c, job, sample = cfg.desom1, plan.job, plan.sample
    lake.write_json(
        {
            "run_id": run_id,
            "sample": asdict(sample),
            "iterations": job.iterations,
            "batch_size": job.batch_size,
        },
        RUN_FILE,
    )
    # each parameter once: the settings as this run used them, then what only the run knows
    registry.log_training_inputs(
        "desom1",
        replace(c, iterations=job.iterations, batch_size=job.batch_size, learning_rate=job.learning_rate),
        {
            "processes": processes,
            "gpu": job.use_gpu,
            "sample.requested": sample.requested,
            "sample.total_cutouts": sample.total_cutouts,
        },
        registry.TrainingData(
            "desom1 training cutouts", sample.path, plan.nights, sample.rows, Path(sample.path).name
        ),
    )


def record_desom1(model: DESOM, result: dict, plan: Desom1Plan, run_id: str) -> str:
    """Record: curves, prototype map and the registered model in the active run; returns the version."""
    rows, cols = model.map_shape
    decoded = model.decoded_prototypes().squeeze(1).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        png = prototype_map(decoded, model.map_shape, Path(tmp) / "prototype_map.png")
        registry.log_training_outcome(
            result["history"],
            files=[png],
            dicts={"ranks.json": {"prototype_checksums": result["prototype_checksums"]}},
        )
    sample = plan.sample
    return registry.register_model(
        DesomInference(model),
        "desom1",
        input_example=np.zeros((2, 1, CUTOUT_SIZE, CUTOUT_SIZE), np.float32),
        metadata=model.spec.to_dict(),
        tags={"sample": sample.path, "run_id": run_id},
        description=f"DESOM-1 {rows}x{cols}, {plan.job.iterations} iterations on {sample.rows} cutouts of "
        f"nights "
        f"{registry.night_span(plan.nights)} (sample {Path(sample.path).name})",
        extra={"decoded_prototypes": decoded, "prototypes": model.som.prototypes.detach().numpy()},
    )


def train_desom1(
    spark,
    lake: Lake,
    cfg: Config,
    iterations: int | None = None,
    processes: int = 1,
    gpu: bool = False,
    sample_size: int | None = None,
    resume: bool = False,
    batch_size: int | None = None,
    cluster: bool = False,
) -> dict:
    """Prepare, fit with DDP, and record DESOM-1.  Returns run id, version and metrics."""
    registry.connect(lake, cfg.mlflow)  # an unreachable MLflow fails here, not after the training
    plan = plan_training(spark, lake, cfg, iterations, processes, gpu, sample_size, resume, batch_size)
    rows, cols = cfg.desom1.map_shape
    name = f"desom1 {rows}x{cols} {_count(plan.job.iterations)} its nights {registry.night_span(plan.nights)}"
    # the run is open while the ranks train: an interrupted run is resumed under the same run id
    with registry.run(lake, cfg.mlflow, name, run_id=plan.run_id) as active:
        run_id = active.info.run_id
        if plan.run_id is None:
            record_inputs(lake, cfg, plan, run_id, processes)
        model, result = fit_desom1(plan.job, processes, cluster)
        version = record_desom1(model, result, plan, run_id)
    _LOG.info(
        f"train-desom1: registered desom1 version {version} (alias {registry.CHALLENGER}), run {run_id}"
    )
    final = result["history"][-1] if result["history"] else {}
    return {
        "run_id": run_id,
        "version": version,
        "final": final,
        "prototype_checksums": result["prototype_checksums"],
        "history": result["history"],
    }
