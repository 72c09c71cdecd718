"""Classical quality numbers (desomspark.ingest.qa) against the simulator's truth, and the neighbour
metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from desomspark.desom import metrics
from desomspark.evaluation.simulate import plan_night, simulate_ccd
from desomspark.ingest import qa
from desomspark.ingest.detect import process_ccd

SHAPE = (1024, 1024)


@pytest.fixture(scope="module")
def measured(small_sim, config):
    """Per exposure of a balanced plan: the true seeing and the QA numbers of its 4 CCDs (1024x1024)."""
    sim = replace(small_sim, ccd_shape=SHAPE, p_hot_column=0.0)
    rows = []
    for spec in plan_night(28, seed=31, mix="balanced", cfg=sim):
        ccds = []
        for ccd in range(sim.n_ccds):
            pixels, header = simulate_ccd(spec, ccd, sim)
            result = process_ccd(
                pixels.astype(np.float32),
                str(spec.expnum),
                ccd,
                config.ingest,
                pixel_scale=header["PIXSCAL1"],
                saturation=header["SATURATE"],
            )
            ccds.append(
                dict(
                    result.qa,
                    reject_reason=None,
                    dead=result.dead,
                    n_detected=result.n_detected,
                    background=result.background,
                    background_rms=result.background_rms,
                    true_fwhm=header.get("PSFFWHM", np.nan),
                )
            )
        frame = pd.DataFrame(ccds)
        rows.append(
            dict(
                qa.exposure_qa(frame, spec.exptime, sim.zero_point),
                quality=spec.quality,
                kind=spec.kind,
                true_fwhm=float(frame["true_fwhm"].median()),
                true_sky=sim.sky_rate * spec.exptime,
            )
        )
    return pd.DataFrame(rows)


def test_fwhm_matches_the_simulated_seeing(measured):
    # seeing is only a FWHM where the PSF is round and single: Good, B-Seeing, and the background classes
    round_psf = measured[
        measured["quality"].isin(["Good", "B-Seeing", "Streak"])
        | measured["kind"].isin(["scattered", "crowded"])
    ]
    assert len(round_psf) >= 9
    ratio = round_psf["fwhm"] / round_psf["true_fwhm"]
    assert ratio.between(0.9, 1.1).all(), round_psf[["quality", "fwhm", "true_fwhm"]].to_string()
    # and it separates bad seeing from good seeing
    assert (
        measured.loc[measured["quality"] == "B-Seeing", "fwhm"].min()
        > measured.loc[measured["quality"] == "Good", "fwhm"].max()
    )


@pytest.mark.parametrize("side", [17, 41])
def test_fwhm_on_the_central_crop_equals_the_whole_stamp(side):
    """half_max_fwhm measures on the stamp's central half first and again on the whole stamp where
    the half-maximum area reaches further: the numbers are those of the whole stamp, bit for bit,
    for stars, donuts, trails and PSFs wider than the crop (which take the second path), in a small
    and a large stamp."""
    rng = np.random.default_rng(4)
    n = 24
    c = np.arange(side) - (side - 1) / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    dx, dy = rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)
    x, y = xx[None] - dx[:, None, None], yy[None] - dy[:, None, None]
    # most within the central half, the last 12 (of a small stamp) or 6 (of a large one) past it
    fwhm = np.concatenate(
        [rng.uniform(1.6, 6.0, n - 12), rng.uniform(7.0, 10.0, 6), rng.uniform(0.6, 0.8, 6) * side]
    )
    sigma = fwhm[:, None, None] / 2.3548
    shapes = {
        "star": np.exp(-(x**2 + y**2) / (2 * sigma**2)),
        "donut": np.exp(-((np.hypot(x, y) - 2 * sigma) ** 2) / (2 * (sigma / 2) ** 2)),
        "trail": np.exp(-(y**2) / (2 * sigma**2)) * (np.abs(x) < 3 * sigma),
    }
    for name, profile in shapes.items():
        stamps = (profile + rng.normal(0, 0.01, profile.shape)).astype(np.float32)
        cropped, whole = qa.half_max_fwhm(stamps, dx, dy), qa.half_max_fwhm(stamps, dx, dy, crop=False)
        assert np.array_equal(cropped, whole), name
    stars = (shapes["star"] + rng.normal(0, 0.01, shapes["star"].shape)).astype(np.float32)
    # the wide ones measured, not cut at the crop
    assert np.allclose(qa.half_max_fwhm(stars, dx, dy)[-12:], fwhm[-12:], rtol=0.1)
    assert qa.half_max_fwhm(stars[:0], dx[:0], dy[:0]).shape == (0,)  # no star left: no error


def test_elongation_is_ordered_by_tracking_error(measured):
    median = measured.groupby("quality")["elongation_median"].median()
    assert median["Good"] < 1.12 < median["BT"] < median["RBT"], median.to_string()
    assert (
        measured.loc[measured["quality"] == "Good", "elongation_median"].max()
        < measured.loc[measured["quality"] == "RBT", "elongation_median"].min()
    )


def test_sky_level_within_two_percent(measured):
    plain = measured[measured["kind"].isin(["", "crowded", "lowexp"])]
    np.testing.assert_allclose(plain["sky"], plain["true_sky"], rtol=0.02)
    # a gradient across the CCDs shows as background structure, a flat sky does not
    gradient = measured.loc[measured["kind"] == "gradient", "background_structure"]
    flat = measured.loc[measured["quality"] == "Good", "background_structure"]
    assert gradient.min() > 5 * flat.max()


def test_a_short_exposure_is_shallower(measured):
    short = measured.loc[measured["kind"] == "lowexp", "depth"]
    normal = measured.loc[measured["quality"] == "Good", "depth"]
    assert short.max() < normal.min() - 1.0


def test_dead_ccd_gives_no_numbers(config):
    result = process_ccd(np.zeros((256, 256), np.float32), "e", 1, config.ingest, pixel_scale=0.2)
    assert result.dead and result.qa["n_stars"] == 0 and np.isnan(result.qa["fwhm"])


def test_half_sample_mode_and_weighted_median():
    assert qa.half_sample_mode([1.0, 1.1, 1.05, 1.02, 5.0, 6.0, 9.0]) == pytest.approx(1.03, abs=0.03)
    assert qa.weighted_median([1.0, 2.0, 10.0, np.nan], [1, 1, 5, 3]) == 10.0
    assert np.isnan(qa.weighted_median([np.nan], [1]))


def test_standardise_is_robust_and_fills_missing_values():
    values = np.array([[1.0, 5.0], [2.0, np.nan], [3.0, 5.0], [4.0, 5.0], [5.0, 5.0], [1000.0, 5.0]])
    z = qa.standardise(values, clip=10.0)
    assert z[5, 0] == 10.0  # an outlier is clipped, not allowed to dominate
    assert z[0, 0] == pytest.approx((1.0 - 3.5) / (2.5 / 1.349))
    assert z[1, 1] == 0.0  # missing -> the median
    assert np.all(z[:, 1] == 0.0)  # a constant column is all zero


def test_neighbour_predictions_on_a_map():
    truth = ["Good", "Good", "Good", "BT", "BT", "RBT"]
    cells = [0, 0, 0, 1, 1, 9]
    positions = {0: (0, 0), 1: (0, 1), 9: (1, 2)}
    predicted = metrics.neighbour_predictions(truth, cells, positions)
    # cell-mates vote; the lone RBT takes its nearest occupied ring (cell 1 at Chebyshev distance 1; cell 0 is
    # at 2)
    assert list(predicted) == ["Good", "Good", "Good", "BT", "BT", "BT"]
    scores = metrics.prediction_scores(truth, predicted, "Good", ["Good", "BT"])
    assert scores["neighbour_accuracy"] == pytest.approx(5 / 6)
    assert scores["neighbour_accuracy_6"] == 1.0 and scores["neighbour_good_bad"] == 1.0
    assert scores["neighbour_good_bad_6"] == 1.0
    # a map of singletons is not rewarded: each exposure is judged by its neighbours
    lonely = metrics.neighbour_predictions(
        ["Good", "BT", "Good", "BT"], [0, 1, 2, 3], {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (0, 3)}
    )
    assert (lonely == np.array(["Good", "BT", "Good", "BT"])).sum() < 4


def test_neighbour_distance_prefers_a_map_that_keeps_alike_samples_together():
    """The label-free score that chooses among DESOM-2 draws: two clusters in the input space, one
    map that gives each its own cells, one that mixes them (same cell sizes): the first scores lower."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 0.1, (12, 4)), rng.normal(3, 0.1, (12, 4))])
    positions = {c: (0, 2 * c) for c in range(6)}  # cells two apart: each cell is its members only
    sorted_cells = np.repeat(np.arange(6), 4)  # cells 0-2 hold the first cluster, 3-5 the second
    mixed = sorted_cells[np.r_[0:12:2, 12:24:2, 1:12:2, 13:24:2]]  # every cell holds both clusters
    good = metrics.neighbour_distance(x, sorted_cells, positions)
    bad = metrics.neighbour_distance(x, mixed, positions)
    assert 0 < good < 0.2 < 0.5 < bad
    # neighbours of a lone sample are its nearest ring's members; a sample alone in all has none
    neighbours = metrics.map_neighbours([0, 0, 5], {0: (0, 0), 5: (0, 3)})
    assert [list(n) for n in neighbours] == [[1], [0], [0, 1]]
    assert [list(n) for n in metrics.map_neighbours([7], {7: (0, 0)})] == [[]]


def test_knn_leaves_the_sample_out():
    features = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    truth = ["a", "a", "a", "b", "b", "b"]
    assert list(metrics.knn_predictions(truth, features, k=2)) == truth
    # with itself left out, a lone sample of a class cannot vote for itself
    assert metrics.knn_predictions(["a", "a", "b"], np.array([[0.0], [0.1], [0.2]]), k=1)[2] == "a"


def test_map_size_keeps_several_exposures_per_cell():
    from desomspark.config import Desom2Config
    from desomspark.desom.exposure_mapper import desom2_map_shape

    survey = Desom2Config(map_shape=(20, 20), exposures_per_cell=4)
    assert desom2_map_shape(survey, 50_000) == (20, 20)  # survey-size: the paper's map
    assert desom2_map_shape(survey, 300) == (9, 9)  # a small night: ~4 per cell, not 261 singletons
    assert desom2_map_shape(survey, 8) == (2, 2)
    assert desom2_map_shape(Desom2Config(map_shape=None, exposures_per_cell=4), 1600) == (20, 20)


def test_yaml_defaults_and_dataclass_defaults_agree():
    """conf/default.yaml and the config dataclasses state the same numbers (one may not drift from the
    other)."""
    from desomspark.config import Config, load_config

    loaded, declared = load_config(), Config()
    for section in ("simulate", "ingest", "desom1", "desom2", "mlflow"):
        assert getattr(loaded, section) == getattr(declared, section), section
    assert set(loaded.desom2.qa_inputs) <= set(qa.QA_FEATURES)


def test_noise_correlation_is_zero_for_white_noise_and_sees_a_pattern():
    rng = np.random.default_rng(3)
    white = rng.normal(0.0, 10.0, (600, 500)).astype(np.float32)
    assert qa.noise_correlation(white, 10.0) < 0.05
    # neighbouring pixels sharing half their noise: rho = 0.5 along x
    shared = (white[:, :-1] + white[:, 1:]) / np.sqrt(2)
    assert 0.4 < qa.noise_correlation(shared, 10.0) < 0.6
    # sources (beyond 3 rms) do not count as sky
    spotted = white.copy()
    spotted[::40, ::40] += 5000.0
    assert qa.noise_correlation(spotted, 10.0) < 0.05
    assert np.isnan(qa.noise_correlation(white[:1], 10.0)) and np.isnan(qa.noise_correlation(white, 0.0))


def test_cell_labels_sort_a_later_night():
    """Out of sample: a training night labels cells; a later exposure in an empty cell takes its ring's."""
    truth = ["Good", "Good", "BT", "BT", "RBT"]
    cells = [0, 0, 1, 1, 5]
    positions = {0: (0, 0), 1: (0, 1), 2: (0, 2), 5: (2, 2), 9: (0, 4)}
    predicted = metrics.cell_label_predictions(truth, cells, positions, [0, 1, 2, 9])
    # cells 2 and 9 are empty: the nearest labelled cell of 2 is 1 (BT), that of 9 is 5 (RBT)
    assert list(predicted) == ["Good", "BT", "BT", "RBT"]
    fitted = metrics.knn_predictions(
        truth, np.array([[0.0], [0.1], [5.0], [5.1], [5.2]]), 1, np.array([[0.2]])
    )
    assert list(fitted) == ["Good"]


def test_a_trails_length_is_compared_on_a_log_scale():
    """0 on most exposures, hundreds of pixels on a few: log(1 + value), so one long trail does not set
    the scale by which a short one is judged; the other numbers are compared as they are."""
    names = ("fwhm", "trail_length")
    values = np.array([[0.7, 0.0], [0.8, 130.0], [0.9, 1000.0], [np.nan, -1.0]])
    out = qa.compared(values, names)
    np.testing.assert_array_equal(out[:, 0], values[:, 0])
    np.testing.assert_allclose(out[:, 1], [0.0, np.log1p(130.0), np.log1p(1000.0), 0.0])
    assert values[1, 1] == 130.0  # the caller's array is left as it was


def test_novelty_of_a_class_training_never_saw(config):
    """holdout.novelty: the AUC of the novelty distance for a class absent from training, and the share
    the watch rule's cut (quantile x margin of the training distances) flags, of it and of the rest."""
    import pandas as pd

    from desomspark.evaluation.holdout import novelty

    rng = np.random.default_rng(5)
    train = pd.DataFrame({"truth_label": ["Good", "BT"] * 50, "distance": rng.uniform(0.0, 1.0, 100)})
    seen = rng.uniform(0.0, 1.0, 40)
    unseen = np.r_[rng.uniform(2.0, 3.0, 15), rng.uniform(0.0, 1.0, 5)]  # 15 far, 5 ordinary
    test = pd.DataFrame({"truth_label": ["Good"] * 40 + ["AmpGlow"] * 20, "distance": np.r_[seen, unseen]})
    found = novelty(train, test, config)
    assert set(found) == {"AmpGlow"}
    entry = found["AmpGlow"]
    cut = np.quantile(train["distance"], config.watch.novelty_quantile) * config.watch.novelty_margin
    assert entry["cutoff"] == pytest.approx(cut)
    assert entry["hit_rate"] == pytest.approx(15 / 20) and entry["false_alarms"] == 0.0
    # the verdicts' margin beside it: a cut at the 99th percentile itself sends a few seen ones to review
    at_reach = novelty(train, test, replace(config, decide=replace(config.decide, novelty_margin=1.0)))
    reach = np.quantile(train["distance"], config.watch.novelty_quantile)
    assert at_reach["AmpGlow"]["review_rate"] == pytest.approx((unseen > reach).mean())
    assert at_reach["AmpGlow"]["review_false_alarms"] == pytest.approx((seen > reach).mean())
    assert 0.75 < entry["auc"] < 1.0 and entry["exposures"] == 20
    # the baseline's numbers: robust z-scores of the reference's, a trail's length on log(1 + px)
    frame = pd.DataFrame({name: rng.normal(1.0, 0.1, 30) for name in qa.QA_FEATURES})
    frame["trail_length"] = [0.0] * 27 + [100.0, 300.0, 900.0]
    z = qa.compared_z(frame, reference=frame)
    column = list(qa.QA_FEATURES).index("trail_length")
    assert z[:27, column].tolist() == [0.0] * 27 and 0 < z[27, column] < z[28, column] < z[29, column]
