"""DESOM-1 trained with DDP (2 CPU processes, gloo) launched by TorchDistributor, tracked in a real MLflow
store."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from desomspark.lake.layout import Lake
from desomspark.stages.ingest import ingest


@pytest.fixture(scope="module")
def lake(spark, night_dir, tmp_path_factory, config):
    lake = Lake(str(tmp_path_factory.mktemp("lake1")))
    ingest(spark, str(night_dir), lake, cfg=config.ingest)
    return lake


@pytest.fixture(scope="module")
def small_config(config):
    """A 6x6 DESOM-1 with the paper's layers, trained briefly."""
    return replace(
        config,
        desom1=replace(
            config.desom1, map_shape=(6, 6), iterations=40, batch_size=64, checkpoint_every=20, log_every=10
        ),
    )


@pytest.fixture(scope="module")
def trained(spark, lake, small_config):
    from desomspark.desom.train import load_checkpoint
    from desomspark.stages.train_desom1 import train_desom1

    result = train_desom1(spark, lake, small_config, processes=2, sample_size=800)
    # the trained weights as they were (a later test trains again in this lake)
    return result | {"state": load_checkpoint(lake.path("checkpoints/desom1/last.pt"))}


def test_ddp_ranks_end_with_identical_prototypes(trained):
    sums = trained["prototype_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]


def test_loss_curve_and_metrics(trained):
    history = trained["history"]
    assert [h["iteration"] for h in history] == [10, 20, 30, 40]
    assert history[-1]["reconstruction"] < history[0]["reconstruction"]
    assert 0 <= history[-1]["topographic_error"] <= 1


def test_sample_is_uniform_and_fixed(spark, lake, small_config):
    """The seed fixes the sample: drawn again from scratch it is the same rows; another seed, others."""
    import shutil

    import pyarrow.dataset as ds

    from desomspark.stages.train_desom1 import training_sample

    def keys(s):
        return sorted(
            map(
                tuple,
                ds.dataset(s.path)
                .to_table(columns=["exposure_id", "hdu_index", "source_index"])
                .to_pandas()
                .to_numpy()
                .tolist(),
            )
        )

    a = training_sample(spark, lake, 800, seed=5)
    first = keys(a)
    assert training_sample(spark, lake, 800, seed=5) == a  # reused, not drawn again
    shutil.rmtree(a.path)
    b = training_sample(spark, lake, 800, seed=5)  # drawn again from the cutouts
    assert b == a and keys(b) == first and len(first) == a.rows
    other = keys(training_sample(spark, lake, 800, seed=6))
    # drawn independently, two samples share about the sampled fraction of their rows, not all of them
    assert other != first and len(set(other) & set(first)) < (a.rows / a.total_cutouts + 0.15) * len(first)
    total = a.total_cutouts
    assert 0.8 * 800 < a.rows <= total and a.rows < 1.2 * 800
    sample = ds.dataset(a.path).to_table(columns=["exposure_id"]).to_pandas()
    cutouts = lake.read("cutouts", columns=["exposure_id"]).to_pandas()
    # every exposure is represented roughly in proportion to its cutouts
    share = sample["exposure_id"].value_counts(normalize=True)
    expected = cutouts["exposure_id"].value_counts(normalize=True)
    assert set(share.index) == set(expected.index)
    assert (share - expected).abs().max() < 0.06


def test_registry_holds_model_alias_params_and_png(lake, trained, small_config):
    import mlflow
    from mlflow import MlflowClient

    from desomspark import registry

    registry.connect(lake, small_config.mlflow)
    client = MlflowClient()
    version = client.get_model_version_by_alias("desom1", "challenger")
    assert str(version.version) == trained["version"]
    run = client.get_run(trained["run_id"])
    assert run.data.params["desom1.gamma"] == str(small_config.desom1.gamma)
    assert run.data.params["processes"] == "2"
    # each parameter once, with the value the run used
    assert run.data.params["desom1.iterations"] == str(small_config.desom1.iterations)
    assert "iterations" not in run.data.params and "batch_size" not in run.data.params
    # a name that says what ran, the code and the data it ran on
    night = lake.nights("cutouts")[0]
    assert run.info.run_name == f"desom1 6x6 {small_config.desom1.iterations} its nights {night}"
    assert len(run.data.tags["git_commit"]) >= 40 and run.data.tags["training_nights"] == night
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "desom1 training cutouts" and dataset.dataset.digest.startswith(
        "n800-seed"
    )
    assert {t.key: t.value for t in dataset.tags}["rows"] == run.data.tags["training_rows"]
    assert "6x6" in version.description and night in version.description
    # the signature says what comes out, not only what goes in
    outputs = mlflow.models.get_model_info(f"models:/desom1/{trained['version']}").signature.outputs.to_dict()
    assert [o["name"] for o in outputs] == ["node_distance_latent"] and list(
        outputs[0]["tensor-spec"]["shape"]
    ) == [-1, 162]
    # no experiment outside the lake (MLflow's Default one is homed there too)
    assert all(e.artifact_location.startswith(f"file://{lake.root}/") for e in client.search_experiments())
    assert "loss" in run.data.metrics and "topographic_error" in run.data.metrics
    assert len(client.get_metric_history(trained["run_id"], "loss")) == 4
    artifacts = [a.path for a in client.list_artifacts(trained["run_id"])]
    assert "prototype_map.png" in artifacts
    png = mlflow.artifacts.download_artifacts(run_id=trained["run_id"], artifact_path="prototype_map.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    uri = f"models:/desom1/{trained['version']}"
    assert registry.model_metadata(uri)["map_shape"] == [6, 6]
    assert registry.model_extra(uri)["decoded_prototypes"].shape == (36, 32, 32)
    # the served graph (pt2) is the trained model: same nodes, distances and latent vectors on real cutouts
    import torch

    from desomspark.desom.model import DesomInference, ModelSpec, split_inference
    from desomspark.ingest.cutout import decode_pixels

    state = trained["state"]
    trained_model = ModelSpec.from_dict(state["spec"]).build()
    trained_model.load_state_dict(state["model"])
    pixels = lake.read("cutouts", columns=["pixels"]).to_pandas()["pixels"].head(64).tolist()
    x = torch.as_tensor(decode_pixels(pixels)).unsqueeze(1)
    with torch.no_grad():
        served = split_inference(registry.load_model(uri)(x))
        mine = split_inference(DesomInference(trained_model.eval())(x))
    np.testing.assert_array_equal(served[0].numpy(), mine[0].numpy())
    np.testing.assert_allclose(served[1].numpy(), mine[1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served[2].numpy(), mine[2].numpy(), rtol=1e-5, atol=1e-5)
    assert len(np.unique(served[0].numpy())) > 1 and served[2].shape == (64, 160)


def test_promote_moves_champion(lake, trained):
    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "desomspark.cli", "promote", "--lake", lake.root, *a],
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = run("--model", "desom1", "--version", trained["version"])
    assert done.returncode == 0, done.stderr
    from mlflow import MlflowClient

    assert str(MlflowClient().get_model_version_by_alias("desom1", "champion").version) == trained["version"]
    missing = run("--model", "desom1", "--version", "99")
    assert missing.returncode == 1 and "no version 99" in missing.stderr


def test_resume_without_a_run_is_refused(spark, tmp_path, small_config):
    from desomspark.stages.train_desom1 import train_desom1

    with pytest.raises(ValueError, match="no interrupted DESOM-1 run"):
        train_desom1(spark, Lake(str(tmp_path)), small_config, resume=True)


def test_a_killed_train_desom1_resumes_from_its_checkpoint(lake, tmp_path):
    """Kill the command (driver, torchrun and ranks) mid-training; ``--resume`` finishes the same MLflow
    run."""
    import os
    import signal
    import time

    import yaml

    from desomspark.desom.train import load_checkpoint

    conf = tmp_path / "small.yaml"
    conf.write_text(
        yaml.safe_dump(
            {"desom1": {"map_shape": [6, 6], "batch_size": 32, "checkpoint_every": 10, "log_every": 10}}
        )
    )
    args = [
        sys.executable,
        "-m",
        "desomspark.cli",
        "train-desom1",
        "--lake",
        lake.root,
        "--conf",
        str(conf),
        "--master",
        "local[2]",
    ]
    checkpoint = lake.path("checkpoints/desom1/last.pt")
    started = time.time()
    proc = subprocess.Popen(
        args + ["--iterations", "400", "--sample", "600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = started + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(checkpoint) and os.path.getmtime(checkpoint) > started:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped = load_checkpoint(checkpoint)["iteration"]
    assert 0 < stopped < 400
    run_id = lake.read_json("checkpoints/desom1/run.json")["run_id"]

    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed at iteration {stopped}" in done.stdout + done.stderr
    assert load_checkpoint(checkpoint)["iteration"] == 400
    from mlflow import MlflowClient

    from desomspark import registry

    registry.connect(lake)
    client = MlflowClient()
    version = client.get_model_version_by_alias("desom1", "challenger")
    assert version.run_id == run_id  # the interrupted run, finished
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert max(steps) == 400 and len(steps) == len(set(steps)) == 40  # every 10 iterations, once
