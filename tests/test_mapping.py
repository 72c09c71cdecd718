"""Histo-vectors in a pandas UDF, DESOM-2, assignment and the nightly job, on a real lake."""

from __future__ import annotations

import copy
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from desomspark import registry
from desomspark.desom.exposure_mapper import (
    NOVELTY_QUANTILE,
    fit_normalisation,
    gaussian_taps,
    hellinger,
    smooth_on_grid,
)
from desomspark.desom.mapping import cutout_nodes, map_inputs
from desomspark.desom.model import split_inference
from desomspark.errors import UserError
from desomspark.evaluation.simulate import simulate_night
from desomspark.ingest.cutout import decode_pixels
from desomspark.lake.layout import Lake
from desomspark.lake.queries import desom2_inputs, input_matrix
from desomspark.registry import ModelMismatch, cached_model, check_desom1
from desomspark.stages.histovectors import histovector
from desomspark.stages.ingest import ingest
from desomspark.stages.nightly import nightly, run_assign, run_histovectors
from desomspark.stages.train_desom2 import train_desom2

TABLES = ("exposures", "ccds", "cutouts", "rejects", "histovectors", "assignments")


@pytest.fixture(scope="module")
def mapped(spark, night_dir, tmp_path_factory, config):
    """A lake with a small DESOM-1 and DESOM-2 trained on the test night, histo-vectors and cells."""
    from desomspark.stages.train_desom1 import train_desom1

    lake = Lake(str(tmp_path_factory.mktemp("maplake")))
    cfg = replace(
        config,
        desom1=replace(
            config.desom1, map_shape=(5, 5), iterations=30, batch_size=64, checkpoint_every=0, log_every=10
        ),
        desom2=replace(config.desom2, map_shape=None, iterations=200, batch_size=12, log_every=100),
    )
    ingest(spark, str(night_dir), lake, cfg=cfg.ingest)
    d1 = train_desom1(spark, lake, cfg, processes=1, sample_size=2000)
    run_histovectors(spark, lake, cfg, desom1_uri=f"models:/desom1/{d1['version']}")
    d2 = train_desom2(lake, cfg)
    table = run_assign(spark, lake, cfg, desom2_uri=f"models:/desom2/{d2['version']}")
    return lake, cfg, d1, d2, table


def test_udf_matches_the_model_called_directly(mapped):
    lake, cfg, d1, _, _ = mapped
    model = cached_model(registry.download_uri("desom1", d1["version"]), "cpu")
    cutouts = lake.read("cutouts").to_pandas()
    nodes = cutout_nodes(model, decode_pixels(cutouts["pixels"].tolist()))
    vectors = lake.read("histovectors").to_pandas().set_index("exposure_id")
    assert len(vectors) == cutouts["exposure_id"].nunique() == 12
    for exposure, rows in cutouts.groupby("exposure_id"):
        expected = histovector(nodes[rows.index], rows["weight"].to_numpy(np.float64), 25)
        np.testing.assert_allclose(vectors.loc[exposure, "counts"], expected, rtol=1e-9)
        assert vectors.loc[exposure, "n_cutouts"] == len(rows)
    assert set(vectors["desom1_version"]) == {d1["version"]}


def test_weights_make_counts_sum_to_detections(mapped):
    lake, *_ = mapped
    vectors = lake.read("histovectors").to_pandas().set_index("exposure_id")
    ccds = lake.read("ccds").to_pandas()
    detected = ccds[ccds["n_sampled"] > 0].groupby("exposure_id")["n_detected"].sum()
    for exposure, row in vectors.iterrows():
        assert np.sum(row["counts"]) == pytest.approx(detected[exposure], rel=1e-6)
        assert row["n_detected"] == pytest.approx(detected[exposure], rel=1e-6)
    # some CCD kept fewer cutouts than it detected, so weighting mattered
    assert (ccds["n_detected"] > ccds["n_sampled"]).any()


def test_assignments_carry_both_versions_and_cells(mapped):
    lake, _, d1, d2, table = mapped
    rows, cols = d2["map_shape"]
    assert len(table) == 12
    assert set(table["desom1_version"]) == {d1["version"]} and set(table["desom2_version"]) == {d2["version"]}
    assert (table["cell"] == table["cell_y"] * cols + table["cell_x"]).all()
    assert table["cell_x"].between(0, cols - 1).all() and table["cell_y"].between(0, rows - 1).all()
    assert (table["distance"] >= 0).all() and table["label"].isna().all()


def test_desom2_normalisation_is_stored_in_the_model(mapped):
    lake, _, _, d2, table = mapped
    uri = f"models:/desom2/{d2['version']}"
    extra = registry.model_extra(uri)
    vectors = lake.read("histovectors").to_pandas()
    counts = torch.tensor(np.stack(vectors["counts"]), dtype=torch.float32)
    sigma = registry.model_metadata(uri)["node_smoothing"]
    assert sigma == d2["mapper"].node_taps.numel() // 2 / 3 > 0  # the conf's 1 node: taps out to 3 sigma
    h = hellinger(smooth_on_grid(counts, gaussian_taps(sigma), (5, 5)))
    np.testing.assert_allclose(extra["bin_scale"], np.full(25, h.max().item()), rtol=1e-5)
    assert registry.model_metadata(uri)["desom1_version"] == d2["desom1_version"]


def test_smoothing_over_desom1_nodes_keeps_the_mass_where_the_map_holds_it():
    """One count in a corner node and one in the middle: the middle keeps nearly all its mass
    inside the 5x5 grid, spread over its neighbours; the corner loses what falls off the map.
    """
    counts = torch.zeros(2, 25)
    counts[0, 12], counts[1, 0] = 1.0, 1.0
    smooth = smooth_on_grid(counts, gaussian_taps(1.0), (5, 5)).reshape(2, 5, 5)
    assert smooth[0].sum() > 0.97 and smooth[0, 2, 2] == smooth[0].max() < 0.2
    assert float(smooth[0, 2, 1]) == pytest.approx(float(smooth[0, 1, 2]))  # round ...
    assert smooth[0, 2, 1] > smooth[0, 1, 1] > smooth[0, 0, 0] > 0  # ... falling off
    assert 0.4 < smooth[1].sum() < 0.55
    assert gaussian_taps(0.0).numel() == 0


def test_a_quality_numbers_weight_multiplies_its_standardised_value():
    """desom2.qa_input_weights: the named number's value enters DESOM-2 multiplied by its weight
    (its scale divided by it); the other numbers and the histogram block are as without weights."""
    rng = np.random.default_rng(3)
    counts = torch.as_tensor(rng.integers(0, 50, (40, 25)), dtype=torch.float32)
    qa = torch.as_tensor(rng.lognormal(0.0, 1.0, (40, 3)), dtype=torch.float32)
    names = ("fwhm", "trail_length", "sky")
    plain = fit_normalisation(counts, qa, "hellinger", 3.0, 0.25, names)
    weighted = fit_normalisation(counts, qa, "hellinger", 3.0, 0.25, names, {"trail_length": 3.0})
    ratio = (plain["qa_scale"] / weighted["qa_scale"]).numpy()
    np.testing.assert_allclose(ratio, [1.0, 3.0, 1.0], rtol=1e-6)
    for key in ("bin_center", "bin_scale", "qa_center"):
        assert torch.equal(plain[key], weighted[key]), key


def test_quality_numbers_as_extra_inputs_round_trip_through_the_registry(spark, mapped):
    """A DESOM-2 trained on histo-vectors + QA numbers: the served graph equals the trained mapper,
    it reads the quality numbers (they change its latent vector), and assign feeds them.
    """
    lake, cfg, _, _, _ = mapped
    features = ("fwhm", "elongation_median", "sky_spread")
    c = replace(cfg.desom2, qa_inputs=features, qa_weight=1.0)
    d2 = train_desom2(lake, replace(cfg, desom2=c))
    uri = registry.download_uri("desom2", d2["version"])
    meta = registry.model_metadata(uri)
    assert meta["qa_inputs"] == list(features) and meta["transform"] == "hellinger" and meta["n_bins"] == 25
    table, _ = desom2_inputs(lake, d2["desom1_version"], features)
    x = input_matrix(table["counts"], table, features)
    assert x.shape == (12, 25 + 3)
    x[0, 25] = np.nan  # an exposure without a measured FWHM still maps
    served = cached_model(uri, "cpu")
    node, dist, z = map_inputs(served, x)
    mine = d2["mapper"].eval()
    with torch.no_grad():
        ref_node, ref_dist, ref_z = (t.numpy() for t in split_inference(mine(torch.as_tensor(x))))
    np.testing.assert_array_equal(node, ref_node)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, ref_z, rtol=1e-5, atol=1e-5)
    # the normalisation runs inside the served graph: raw counts in give what normalising first gives,
    # and not what the bare network gives on raw counts
    with torch.no_grad():
        first = split_inference(mine.inference(mine.normalise(torch.as_tensor(x))))[2].numpy()
        bare = split_inference(mine.inference(torch.as_tensor(np.nan_to_num(x))))[2].numpy()
    np.testing.assert_allclose(first, z, rtol=1e-5, atol=1e-5)
    assert not np.allclose(bare, z, atol=1e-2)
    # ... the smoothing over DESOM-1's nodes with it: the served graph is not the mapper without it
    unsmoothed = copy.deepcopy(mine)
    unsmoothed.node_taps = torch.zeros(0)
    with torch.no_grad():
        assert not np.allclose(split_inference(unsmoothed(torch.as_tensor(x)))[2].numpy(), z, atol=1e-4)
    moved = x.copy()
    moved[:, 25] += 5 * float(d2["mapper"].qa_scale[0])
    assert not np.allclose(map_inputs(served, moved)[2], z, atol=1e-4)
    # assign joins the exposures' numbers and gives what the served model gives
    out = run_assign(
        spark, lake, replace(cfg, desom2=c), desom2_uri=f"models:/desom2/{d2['version']}"
    ).set_index("exposure_id")
    expected = map_inputs(served, input_matrix(table["counts"], table, features))[0]
    assert list(out.loc[table["exposure_id"], "cell"]) == list(expected)
    # a model trained on the histo-vectors alone, unsmoothed, still serves, through the same assign
    plain = replace(cfg.desom2, qa_inputs=(), node_smoothing=0.0)
    d2_alone = train_desom2(lake, replace(cfg, desom2=plain))
    meta_alone = registry.model_metadata(registry.download_uri("desom2", d2_alone["version"]))
    assert not meta_alone.get("qa_inputs") and meta_alone["node_smoothing"] == 0
    alone = run_assign(
        spark, lake, replace(cfg, desom2=plain), desom2_uri=f"models:/desom2/{d2_alone['version']}"
    )
    assert len(alone) == 12 and set(alone["desom2_version"]) == {d2_alone["version"]}


def test_novelty_is_the_latent_distance_over_the_cells_own_scale(mapped):
    """A cell of alike exposures is tight: the novelty divides by each cell's spread on the training set."""
    from desomspark.desom.exposure_mapper import NOVELTY_MIN_MEMBERS
    from desomspark.ingest.qa import LOG_SCALED

    lake, cfg, _, d2, _ = mapped
    mapper = d2["mapper"].eval()
    inputs = tuple(cfg.desom2.qa_inputs)
    table, _ = desom2_inputs(lake, d2["desom1_version"], inputs)
    x = torch.as_tensor(input_matrix(table["counts"], table, inputs))
    with torch.no_grad():
        node, novelty, _ = split_inference(mapper(x))
        _, plain, _ = split_inference(mapper.inference(mapper.normalise(x)))
    scale = mapper.cell_scale[node]
    torch.testing.assert_close(novelty * scale, plain, rtol=1e-5, atol=1e-6)
    counts = torch.bincount(node, minlength=mapper.cell_scale.numel())
    overall = torch.quantile(plain, NOVELTY_QUANTILE)
    for cell in torch.unique(node):
        members = novelty[node == cell]
        if counts[cell] >= NOVELTY_MIN_MEMBERS:  # its own far members sit at 1
            assert float(torch.quantile(members, NOVELTY_QUANTILE)) == pytest.approx(1.0, rel=1e-4)
        else:  # too few to judge by: the map's scale
            assert float(mapper.cell_scale[cell]) == pytest.approx(float(overall), rel=1e-5)
    assert (counts >= NOVELTY_MIN_MEMBERS).any() and not torch.allclose(scale, scale[0])
    # the log-scaled numbers (a trail's length) are flagged for the graph, the others not
    assert [bool(v) for v in mapper.qa_log] == [name in LOG_SCALED for name in inputs]
    assert "trail_length" in inputs and mapper.qa_log.any()


def test_version_mismatch_is_refused(spark, mapped):
    lake, cfg, _, d2, _ = mapped
    with pytest.raises(ModelMismatch, match="desom1 version"):
        check_desom1(registry.RegisteredModel.load("desom2", d2["version"]), "not-" + d2["desom1_version"])
    from desomspark.stages.assign import write_assignments

    served = registry.RegisteredModel.load("desom2", d2["version"])
    other = registry.RegisteredModel.from_metadata(
        "desom2", served.version, served.uri, served.metadata | {"desom1_version": "999"}
    )
    with pytest.raises(ModelMismatch, match="v999"):
        write_assignments(spark, lake, other)


def test_assign_stores_the_latent_vector_the_served_model_gives(mapped):
    """similar and verdicts read DESOM-2's latent vectors from assignments/; a map that did not
    assign an exposure maps it again, through the model, when asked."""
    from desomspark.lake.queries import latent_vectors, stored_latents

    lake, cfg, _, _, _ = mapped
    assigned = lake.read("assignments").to_pandas()
    (version,) = set(assigned["desom2_version"])
    desom2 = registry.registered(lake, cfg, "desom2", f"models:/desom2/{version}")
    table, _ = desom2_inputs(lake, desom2.desom1_version, desom2.qa_inputs)
    served = map_inputs(
        cached_model(desom2.uri, "cpu"), input_matrix(table["counts"], table, desom2.qa_inputs)
    )
    stored = stored_latents(lake, version, None).set_index("exposure_id").loc[table["exposure_id"]]
    assert len(stored) == 12 and np.stack(stored["z"]).shape == served[2].shape
    np.testing.assert_allclose(np.stack(stored["z"]), served[2], rtol=1e-5, atol=1e-6)
    read = latent_vectors(lake, desom2).set_index("exposure_id").loc[table["exposure_id"]]
    np.testing.assert_array_equal(np.stack(read["z"]), np.stack(stored["z"]))
    # a DESOM-2 that assigned nothing: its vectors come from the model
    short = train_desom2(lake, replace(cfg, desom2=replace(cfg.desom2, iterations=20, seed=7)))
    first = registry.registered(lake, cfg, "desom2", f"models:/desom2/{short['version']}")
    assert first.version != version and stored_latents(lake, first.version, None).empty
    assert first.novelty_quantile == NOVELTY_QUANTILE  # its record says what its distance is over
    table, _ = desom2_inputs(lake, first.desom1_version, first.qa_inputs)
    mapped_again = latent_vectors(lake, first).set_index("exposure_id").loc[table["exposure_id"]]
    direct = map_inputs(
        cached_model(first.uri, "cpu"), input_matrix(table["counts"], table, first.qa_inputs)
    )[2]
    np.testing.assert_allclose(np.stack(mapped_again["z"]), direct, rtol=1e-5, atol=1e-6)


def test_several_draws_keep_the_map_whose_neighbours_are_nearest(mapped):
    """desom2.draws: seeds seed, seed+1... are fitted, the one with the lowest neighbour distance is
    registered, with every draw's score in its run; a draw is the same fitted alone or among others."""
    import json

    from mlflow import MlflowClient

    lake, cfg, _, _, _ = mapped
    c = replace(cfg.desom2, iterations=60, seed=11, draws=3, exposures_per_cell=1)  # a 3x3 map
    three = train_desom2(lake, replace(cfg, desom2=c))
    scores = {d["seed"]: d["neighbour_distance"] for d in three["draws"]}
    assert sorted(scores) == [11, 12, 13] and all(0 < v < 1 for v in scores.values()), scores
    assert three["seed"] == min(scores, key=lambda seed: (scores[seed], seed))
    run = MlflowClient().get_run(three["run_id"])
    assert run.data.params["kept_seed"] == str(three["seed"]) and run.data.params["desom2.draws"] == "3"
    assert run.data.metrics["neighbour_distance"] == pytest.approx(scores[three["seed"]])
    recorded = json.loads(Path(MlflowClient().download_artifacts(three["run_id"], "draws.json")).read_text())
    assert recorded["kept_seed"] == three["seed"] and len(recorded["draws"]) == 3
    alone = train_desom2(lake, replace(cfg, desom2=replace(c, seed=three["seed"], draws=1)))
    kept = three["mapper"].inference.desom.som.prototypes
    torch.testing.assert_close(alone["mapper"].inference.desom.som.prototypes, kept)
    other = train_desom2(lake, replace(cfg, desom2=replace(c, seed=three["seed"] % 3 + 11, draws=1)))
    assert not torch.allclose(other["mapper"].inference.desom.som.prototypes, kept)  # another draw
    with pytest.raises(UserError, match="draws must be at least 1"):
        replace(c, draws=0)


def test_the_lakes_own_store_is_read_as_mlflow_reads_it(mapped):
    """registered() reads a version straight from the lake's SQLite store (no MLflow import): the same
    record as MLflow's client gives, for every version and the champion alias; what it cannot
    answer alone (an alias nobody set, another store) it leaves to MLflow."""
    from mlflow import MlflowClient

    from desomspark.registry.store import is_embedded, read_embedded_version

    lake, cfg, _, _, _ = mapped
    assert is_embedded(lake, cfg.mlflow)
    registry.connect(lake, cfg.mlflow)
    versions = MlflowClient().search_model_versions("name = 'desom2'")
    assert len(versions) >= 2  # the fixture's, and the one the test above trained
    for mv in versions:
        found = read_embedded_version(lake, "desom2", f"models:/desom2/{mv.version}")
        assert found == (str(mv.version), mv.run_id, registry.download_uri("desom2", mv.version))
        fast = registry.RegisteredModel.from_version("desom2", found)
        assert fast == registry.RegisteredModel.load("desom2", mv.version)
        assert fast.metadata == registry.RegisteredModel.load("desom2", mv.version).metadata
    challenger = MlflowClient().get_model_version_by_alias("desom1", registry.CHALLENGER).version
    assert read_embedded_version(lake, "desom1", "models:/desom1@challenger")[0] == str(challenger)
    assert read_embedded_version(lake, "desom1", "models:/desom1@nobody-set-this") is None
    assert read_embedded_version(lake, "desom1", "models:/desom2/1") is None  # another model's URI
    assert read_embedded_version(lake, "desom1", "models:/desom1/999") is None
    with pytest.raises(UserError, match="is a desom2 model, not desom1"):
        registry.registered(lake, cfg, "desom1", "models:/desom2/1")
    assert not is_embedded(lake, replace(cfg.mlflow, tracking_uri="http://127.0.0.1:1"))


def _same_class_closeness(table: pd.DataFrame) -> tuple[float, float]:
    """Share of same-class pairs within Manhattan distance 1 on the map, observed and under shuffled
    labels."""
    xy = table[["cell_x", "cell_y"]].to_numpy()
    labels = table["truth_label"].to_numpy()
    pairs = list(combinations(range(len(table)), 2))
    close = np.array([np.abs(xy[i] - xy[j]).sum() <= 1 for i, j in pairs])

    def score(lab):
        same = np.array([lab[i] == lab[j] for i, j in pairs])
        return close[same].mean()

    rng = np.random.default_rng(0)
    return score(labels), float(np.mean([score(rng.permutation(labels)) for _ in range(200)]))


@pytest.fixture(scope="module")
def fresh_nightly(spark, tmp_path_factory, small_sim, config):
    """nightly on a fresh lake (the shipped default models), twice on the same night."""
    raw = tmp_path_factory.mktemp("raw")
    simulate_night(
        raw, 30, replace(small_sim, ccd_shape=(1024, 1024)), seed=99, mix="balanced", progress=False
    )
    lake = Lake(str(tmp_path_factory.mktemp("nightlake")))
    first = nightly(spark, str(raw), lake, "20260301", config)
    snapshot = {t: lake.read(t).to_pandas() for t in TABLES}
    second = nightly(spark, str(raw), lake, "20260301", config)
    return lake, raw, first, second, snapshot


def test_nightly_on_a_fresh_install_uses_the_default_models(fresh_nightly):
    lake, _, first, _, _ = fresh_nightly
    from mlflow import MlflowClient

    client = MlflowClient()
    for name in ("desom1", "desom2"):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.tags.get("default") == "true"
    assert first.exposures == 30 and sum(first.labels.values()) == 30
    assert len(first.most_novel) == 5
    assert lake.nights("assignments") == ["20260301"]
    lines = first.lines()
    assert lines[0] == (
        "nightly 20260301: 30 exposures assigned, 0 files rejected, 0 with no cutout, of 30 files"
    )
    quantile, reference = first.novelty_reference
    assert quantile == 0.99 and reference <= first.most_novel[0][1]  # the most novel is past the quantile
    assert f"quantile is {reference:.3f}" in "\n".join(lines)
    assert lines[-1] == f"  next: desomspark serve --lake {lake.root} to look at the map and label it"


def test_nightly_twice_gives_identical_tables(fresh_nightly):
    lake, _, first, second, snapshot = fresh_nightly
    keys = {
        "exposures": ["exposure_id"],
        "ccds": ["exposure_id", "hdu_index"],
        "cutouts": ["exposure_id", "hdu_index", "source_index"],
        "rejects": ["path"],
        "histovectors": ["exposure_id"],
        "assignments": ["exposure_id"],
    }
    for table, k in keys.items():
        after = lake.read(table).to_pandas().sort_values(k).reset_index(drop=True)
        before = snapshot[table].sort_values(k).reset_index(drop=True)
        pd.testing.assert_frame_equal(after, before, check_like=True)
    assert first.lines() == second.lines()


def test_alike_exposures_land_together(fresh_nightly):
    lake, *_ = fresh_nightly
    cells = lake.read("assignments").to_pandas()
    truth = lake.read("exposures", columns=["exposure_id", "truth_label"]).to_pandas()
    observed, chance = _same_class_closeness(cells.merge(truth, on="exposure_id"))
    print(f"same-class pairs in the same or a neighbouring cell: {observed:.3f} (chance {chance:.3f})")
    assert observed > chance + 0.05


def test_nightly_refuses_a_champion_pair_that_does_not_belong_together(spark, fresh_nightly, config):
    """A DESOM-1 promoted without a DESOM-2 trained on it: nightly stops before it writes anything."""
    from mlflow import MlflowClient

    lake, raw, _, _, snapshot = fresh_nightly
    client = MlflowClient()
    registry.connect(lake, config.mlflow)
    before = client.get_model_version_by_alias("desom1", "champion").version
    with registry.run(lake, config.mlflow, "another desom1"):
        other = registry.register_model_dir(str(registry.models_dir() / "desom1"), "desom1")
    registry.promote(lake, config.mlflow, "desom1", other)
    try:
        with pytest.raises(ModelMismatch, match="promote a matching pair"):
            nightly(spark, str(raw), lake, "20260302", config)
    finally:
        registry.promote(lake, config.mlflow, "desom1", str(before))
    assert "20260302" not in lake.nights("exposures") and "20260302" not in lake.nights("assignments")
    for table, frame in snapshot.items():
        assert len(lake.read(table).to_pandas()) == len(frame)
