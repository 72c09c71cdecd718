"""DESOM itself: the SOM layer, the joint loss, and an algorithm check on data nobody here made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from desomspark.config import Desom1Config, Desom2Config
from desomspark.desom.metrics import neighbour_vs_random_distance, nmi, purity
from desomspark.desom.model import SOM, ModelSpec, desom1, desom2, temperature
from desomspark.desom.train import Shard, TrainJob, build_model, fit, load_checkpoint, row_groups


def test_grid_distance_is_manhattan():
    som = SOM((3, 4), 2)
    # node (row 0, col 0) = 0, node (row 2, col 3) = 11
    assert som.grid_distance[0, 11] == 5
    assert som.grid_distance[5, 6] == 1 and som.grid_distance[5, 9] == 1 and som.grid_distance[5, 10] == 2


def test_neighbourhood_and_loss():
    som = SOM((5, 5), 3)
    z = torch.randn(8, 3, requires_grad=True)
    d = som.distances(z)
    np.testing.assert_allclose(d.detach(), torch.cdist(z, som.prototypes).detach() ** 2, rtol=1e-4, atol=1e-5)
    w = som.neighbourhood(d.argmin(1), t=1.0)
    assert not w.requires_grad
    assert torch.allclose(w[torch.arange(8), d.argmin(1)], torch.ones(8))
    assert (w <= 1).all() and (w > 0).all()
    loss = som.loss(d, t=1.0)
    loss.backward()
    assert z.grad is not None and som.prototypes.grad is not None  # both sides learn


def test_temperature_decays_from_max_to_min():
    ts = [temperature(i, 100, 10.0, 0.5) for i in range(100)]
    assert ts[0] == pytest.approx(10.0) and ts[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(ts, ts[1:]))


def test_paper_architecture_shapes():
    model = desom1(Desom1Config())
    x = torch.rand(4, 1, 32, 32)
    z, rec, d = model(x)
    assert z.shape == (4, 160) and rec.shape == x.shape and d.shape == (4, 625)
    assert 0 <= rec.min().item() and rec.max().item() <= 1  # sigmoid output
    m2 = desom2(Desom2Config(), 625, (20, 20))
    z2, rec2, d2 = m2(torch.rand(3, 625))
    assert z2.shape == (3, 100) and rec2.shape == (3, 625) and d2.shape == (3, 400)
    assert (z2 >= 0).all()  # ReLU latent


def _write_sample(path, x: np.ndarray, rows_per_group: int):
    table = pa.table({"x": pa.array(list(x.astype(np.float32)), type=pa.list_(pa.float32()))})
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet", row_group_size=rows_per_group)
    return str(path)


def _digits_job(sample, tmp_path, iterations=3000, **kw):
    spec = ModelSpec("desom2", (8, 8), 16, (64,), (256, 128)).to_dict()
    return TrainJob(
        kind="desom2",
        sample_path=sample,
        checkpoint_path=str(tmp_path / "ckpt.pt"),
        spec=spec,
        iterations=iterations,
        batch_size=128,
        learning_rate=2e-3,
        gamma=0.01,
        t_max=4.0,
        t_min=0.3,
        seed=0,
        checkpoint_every=0,
        log_every=500,
        column="x",
        **kw,
    )


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """DESOM (dense AE + 8x8 SOM) on scikit-learn's bundled handwritten digits."""
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    x = digits.data / 16.0
    sample = _write_sample(tmp / "sample", x, rows_per_group=400)
    job = _digits_job(sample, tmp)
    torch.manual_seed(job.seed)
    model = build_model(job)
    shard = Shard(sample, row_groups(sample), "x", torch.device("cpu"), 1e9, torch.Generator().manual_seed(0))
    result = fit(model, shard, job)
    nodes, _ = model.predict(torch.tensor(x, dtype=torch.float32))
    return model, result, digits.target, nodes.numpy()


def test_digits_purity(digits_model):
    # published DESOM on MNIST with an 8x8 map: purity 0.934
    model, _, labels, nodes = digits_model
    print(f"digits: purity {purity(labels, nodes):.3f}, NMI {nmi(labels, nodes):.3f}")
    assert purity(labels, nodes) >= 0.85
    assert nmi(labels, nodes) >= 0.6


def test_loss_falls(digits_model):
    _, result, _, _ = digits_model
    history = result["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["reconstruction"] < 0.5 * history[0]["reconstruction"]
    # (quantization error is not monotone: the latent scale itself changes while T decays)


def test_neighbouring_prototypes_are_closer_than_random_pairs(digits_model):
    model, _, _, _ = digits_model
    # without a neighbourhood (k-means) map neighbours are random pairs: ratio ~1
    near, far = neighbour_vs_random_distance(model.som.prototypes.detach().numpy(), model.map_shape)
    assert near < 0.8 * far
    decoded_near, decoded_far = neighbour_vs_random_distance(
        model.decoded_prototypes().numpy(), model.map_shape
    )
    assert decoded_near < 0.8 * decoded_far


def test_streamed_shard_gives_every_row(tmp_path):
    x = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    sample = _write_sample(tmp_path / "s", x, rows_per_group=7)
    shard = Shard(
        sample,
        row_groups(sample),
        "x",
        torch.device("cpu"),
        max_bytes=10,
        generator=torch.Generator().manual_seed(1),
    )
    assert not shard.in_memory and shard.n == 50
    seen = torch.cat([shard.batch(10) for _ in range(5)])
    assert sorted(seen[:, 0].tolist()) == sorted(x[:, 0].tolist())  # one epoch: each row once


def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    from sklearn.datasets import load_digits

    x = load_digits().data[:600] / 16.0
    sample = _write_sample(tmp_path / "sample", x, rows_per_group=200)
    job = _digits_job(sample, tmp_path, iterations=4000)
    job.checkpoint_every, job.log_every = 50, 50
    spec = tmp_path / "job.json"
    job.to_json(str(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "desomspark.desom.train", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while not (tmp_path / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(job.checkpoint_path)
    assert state is not None and 0 < state["iteration"] < job.iterations
    stopped = state["iteration"]
    job.resume = True
    job.to_json(str(spec))
    done = subprocess.run(
        [sys.executable, "-m", "desomspark.desom.train", str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"resumed at iteration {stopped}" in done.stdout
    final = load_checkpoint(job.checkpoint_path)
    assert final["iteration"] == job.iterations
    # the checkpoint describes its model: rebuilt from it alone, the weights load
    ModelSpec.from_dict(final["spec"]).build().load_state_dict(final["model"])
    iterations = [h["iteration"] for h in final["history"]]
    assert iterations == sorted(set(iterations)) and iterations[-1] == job.iterations


def test_a_model_spec_rebuilds_its_model_and_refuses_nonsense(tmp_path):
    """The spec travels as a plain dict (checkpoint, MLflow metadata) and rebuilds the same architecture."""
    model = desom1(Desom1Config(map_shape=(4, 5), latent_dim=12, conv_channels=(8, 16), dense_units=32))
    d = model.spec.to_dict()
    assert d["kind"] == "desom1" and d["map_shape"] == [4, 5] and d["input_shape"] == [1, 32, 32]
    again = ModelSpec.from_dict(d | {"clip_sigma": 3.0})  # other metadata keys are ignored
    rebuilt = again.build()
    assert again == model.spec and rebuilt.map_shape == (4, 5)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    m2 = desom2(Desom2Config(hidden=(20,), latent_dim=5), 30, (3, 3), desom1_version="7")
    assert ModelSpec.from_dict(m2.spec.to_dict()).build().som.n_nodes == 9 and m2.spec.desom1_version == "7"
    # a spec that only describes a map (the first shipped defaults' metadata) says so when asked to build
    described = ModelSpec.from_dict({"kind": "desom2", "map_shape": [5, 5], "latent_dim": 100})
    assert described.n_nodes == 25
    with pytest.raises(ValueError, match="cannot rebuild"):
        described.build()
    for bad in ({"kind": "desom3"}, {"map_shape": [0, 5]}, {"latent_dim": 0}, {"input_shape": [32, 32]}):
        with pytest.raises(ValueError):
            ModelSpec.from_dict(d | bad)
