"""The GPU side, as far as a CPU machine can check it.

``bench/gpu_check.py`` must run on a bare GPU host (torch, numpy, pyarrow,
pandas, scikit-learn; no Spark, MLflow, sep, astropy, PyYAML or fsspec): a
smoke run here hides those packages from it and from the training rank it
starts.  Resuming must keep the run's own way of stepping Adam.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from desomspark.desom.mapping import cutout_nodes
from desomspark.desom.model import DesomInference, ModelSpec, split_inference
from desomspark.desom.train import TrainJob, load_optimizer_state, scaled_learning_rate
from desomspark.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

HIDDEN = ("pyspark", "py4j", "mlflow", "sep", "astropy", "yaml", "fsspec", "galsim", "matplotlib")

# imported first by every Python started with this folder on PYTHONPATH (the check and its rank)
BLOCKER = f"""
import sys

class _BareGpuHost:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ImportError(name + " is not installed on a bare GPU host")
        return None

sys.meta_path.insert(0, _BareGpuHost())
"""


def test_gpu_check_runs_without_spark_mlflow_sep_astropy(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "figures.json"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site"), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "--quick",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout, proc.stdout
    figures = json.loads(out.read_text())
    runs = figures["training"]["runs"]
    assert set(runs) == {"graph_s42", "nchw_s42", "bf16_s42", "eager_s42", "eager_s43", "graph_b4"}
    assert len(figures["step_variants"]) == 5
    assert all(r["samples_per_s"] > 0 for r in runs.values()) and figures["training"]["bare_loop_per_s"] > 0
    # the same seed gives the same run, to the order of float sums; another seed another one.  On a
    # CPU the graph switch changes no arithmetic and channels_last only the order of the convolutions'
    # sums (and a loaded machine schedules oneDNN's threads differently run to run: 1e-8 to 1e-7 in
    # loss), both far inside the noise of another seed.
    loss = figures["convergence"]["loss"]
    assert loss["seed_noise"] > 0
    assert loss["nchw_s42_diff"] < 1e-3 * loss["seed_noise"]
    assert loss["graph_s42_diff"] < 1e-3 * loss["seed_noise"]
    mapping = figures["mapping"]
    assert mapping["same_nodes"] == 1.0 and mapping["project_per_s"] > 0 and mapping["udf"][0]["rows"] == 1000
    assert "| (a) project entry point as configured" in proc.stdout


def test_uint8_and_float_cutouts_map_to_the_same_nodes():
    torch.manual_seed(0)
    spec = ModelSpec("desom1", (4, 4), 8, (1, 32, 32), (4, 8, 8), 16)
    served = DesomInference(spec.build()).eval()
    stored = np.random.default_rng(1).integers(0, 256, (300, 32, 32), dtype=np.uint8)
    scaled = stored.astype(np.float32) / np.float32(255.0)
    with torch.no_grad():
        direct = split_inference(served(torch.from_numpy(scaled).unsqueeze(1)))[0].numpy()
    np.testing.assert_array_equal(cutout_nodes(served, stored, batch_size=128), direct)
    np.testing.assert_array_equal(cutout_nodes(served, scaled, batch_size=128), direct)
    assert cutout_nodes(served, stored[:0]).shape == (0,)


def test_resume_keeps_this_runs_adam_and_its_step_count():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    eager = torch.optim.Adam(layer.parameters(), lr=1e-3)
    for _ in range(3):
        layer(torch.randn(8, 4)).square().mean().backward()
        eager.step()
    saved = eager.state_dict()
    fused = torch.optim.Adam(
        layer.parameters(), lr=1e-3, fused=True
    )  # as a GPU run makes it (fused on CPU here)
    load_optimizer_state(fused, saved)
    assert fused.param_groups[0]["fused"] is True
    state = fused.state[layer.weight]
    assert float(state["step"]) == 3.0 and state["step"].dtype == torch.float32
    layer(torch.randn(8, 4)).square().mean().backward()
    fused.step()
    assert float(fused.state[layer.weight]["step"]) == 4.0


def test_a_training_job_refuses_an_unknown_precision():
    with pytest.raises(UserError, match="precision"):
        TrainJob(
            kind="desom1",
            sample_path="s",
            checkpoint_path="c",
            spec={},
            iterations=1,
            batch_size=1,
            learning_rate=1e-3,
            gamma=0.0,
            t_max=1.0,
            t_min=0.5,
            precision="fp16",
        )


def test_learning_rate_follows_the_square_root_of_the_batch():
    assert scaled_learning_rate(1e-3, 256, 1024) == 2e-3
    assert scaled_learning_rate(1e-3, 256, 256) == 1e-3
    assert scaled_learning_rate(2e-3, 256, 64) == 1e-3
