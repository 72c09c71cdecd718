"""What astronomers see: thumbnails, figures, the HTML report in a real browser, and the evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import HOSTILE_OBJECT
from PIL import Image
from tools import open_browser

from desomspark.evaluation.evaluate import evaluate, majority_scores
from desomspark.lake.layout import Lake
from desomspark.lake.queries import exposure_views
from desomspark.serve import plots
from desomspark.serve.report import write_report


@pytest.fixture(scope="module")
def lake(mapped_lake):
    return mapped_lake


def test_ingest_keeps_a_mosaic_and_one_full_resolution_window_per_exposure(lake, config):
    ccds = lake.read("ccds").to_pandas()
    windows = ccds[ccds["window"].notna()]
    # two CCDs per exposure (the central one, and its neighbour should it be dead), full resolution:
    # the central window_size pixels of a 512x512 CCD
    assert sorted(windows["exposure_id"]) == sorted(list(ccds["exposure_id"].unique()) * 2)
    side = config.ingest.window_size
    assert (windows["window_height"] == side).all() and (windows["window_width"] == side).all()
    assert all(len(w) == side * side for w in windows["window"])
    views = exposure_views(lake, list(windows["exposure_id"][:2]))
    for view in views.values():
        # 4 CCDs in a 2x2 focal plane of 128x128 thumbnails with 2-pixel gaps
        assert view["mosaic"].shape == (2 * 128 + 2, 2 * 128 + 2)
        assert view["window"].shape == (side, side) and view["window"].dtype == np.uint8


def test_plots_have_the_right_sizes_and_show_their_data(tmp_path):
    rng = np.random.default_rng(0)

    def grey(path):
        return np.asarray(Image.open(path).convert("L"), dtype=float)

    prototypes = np.zeros((625, 32, 32))
    prototypes[0] = 1.0  # node (0, 0) bright, every other node dark
    path = plots.prototype_map(prototypes, (25, 25), tmp_path / "p.png")
    assert Image.open(path).size == (1000, 1000)  # 25 nodes x 0.4 in x 100 dpi
    image = grey(path)
    dark = image < 60  # the map: 624 dark tiles and one bright
    rows, cols = np.nonzero(dark.mean(axis=1) > 0.5)[0], np.nonzero(dark.mean(axis=0) > 0.5)[0]
    top, left, bottom, right = rows.min(), cols.min(), rows.max(), cols.max()
    tile = (bottom - top) / 25
    assert 0.95 < (right - left) / (bottom - top) < 1.05 and tile > 20
    first = image[int(top + tile / 2), int(left + tile / 2)]  # inside the tile of node (0, 0)
    last = image[int(bottom - tile / 2), int(right - tile / 2)]  # inside the tile of node (24, 24)
    assert first > 200 and last < 60, "the bright prototype is not drawn where its node is"
    examples = [
        {
            "exposure_id": str(i),
            "window": rng.integers(0, 255, (500, 500), dtype=np.uint8),
            "counts": rng.random(625),
        }
        for i in range(4)
    ]
    path = plots.histovector_figure(examples, (25, 25), tmp_path / "h.png")
    assert Image.open(path).size == (990, int(3.2 * 4 * 90)) and grey(path).std() > 20
    cells = pd.DataFrame({"cell_x": [0, 3], "cell_y": [0, 4], "count": [5, 2], "truth": ["Good", None]})
    path = plots.desom2_map(cells, (5, 5), tmp_path / "m.png", by="truth")
    assert Image.open(path).size == (990, 450) and grey(path).std() > 10
    members = [{"caption": str(i), "mosaic": rng.random((40, 40)) * 255, "window": None} for i in range(9)]
    path = plots.cell_gallery(members, tmp_path / "g.png", "cell")
    assert Image.open(path).size == (918, round((1.9 * 3 + 0.5) * 90)) and grey(path).std() > 20
    # a blank picture of the same size would fail every check above
    Image.new("L", (1000, 1000), 255).save(tmp_path / "blank.png")
    assert grey(tmp_path / "blank.png").std() == 0


def test_gallery_window_skips_a_dead_central_ccd():
    from desomspark.lake.queries import central_first

    group = pd.DataFrame(
        {
            "hdu_index": [1, 2, 3, 4],
            "ccd_row": [0, 0, 1, 1],
            "ccd_col": [0, 1, 0, 1],
            "dead": [True, False, False, False],
        }
    )
    assert list(central_first(group)["hdu_index"]) == [2, 3, 4, 1]
    group["dead"] = False
    assert list(central_first(group)["hdu_index"]) == [1, 2, 3, 4]


def test_evaluate_of_a_remote_lake_asks_for_a_local_out(config):
    # without --out the tables would land in a local folder named after the URL
    with pytest.raises(ValueError, match="--out"):
        evaluate(Lake("s3://survey-lake/desom"), config)


def test_majority_scores_by_hand():
    truth = ["Good", "Good", "BT", "BT", "Good", "RBT"]
    clusters = [0, 0, 0, 1, 2, 2]  # 0 -> Good, 1 -> BT, 2 -> tie broken to one class
    s = majority_scores(truth, clusters)
    assert s["clusters"] == 3 and s["purity"] == pytest.approx(4 / 6)
    perfect = majority_scores(truth, [0, 0, 1, 1, 0, 2])
    assert (
        perfect["purity"] == 1.0 and perfect["accuracy"] == perfect["precision"] == perfect["recall"] == 1.0
    )


def test_report_opens_a_cell_gallery_in_a_browser_and_shows_headers_as_text(lake, config, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    index = write_report(lake, config, tmp_path / "site")
    assert HOSTILE_OBJECT not in index.read_text()  # escaped in the file itself
    assert "notes.fits (not_fits)" in index.read_text()  # the night's summary names its rejected files
    nights_page = (tmp_path / "site" / "nights.html").read_text()  # drift and CCD health, linked from the map
    assert 'href="nights.html"' in index.read_text() and (tmp_path / "site" / "img" / "nights.png").is_file()
    night = lake.nights("assignments")[0]
    assert nights_page.count(f"<td>{night}</td>") >= 1 + lake.read("ccds").to_pandas()["hdu_index"].nunique()
    assignments = lake.read("assignments").to_pandas()
    hostile_id = lake.read("exposures").to_pandas().query("object == @HOSTILE_OBJECT")["exposure_id"].iloc[0]
    target = assignments[assignments["exposure_id"] == hostile_id].iloc[0]
    x, y = int(target.cell_x), int(target.cell_y)

    browser = open_browser(tmp_path)
    try:
        browser.get(index.as_uri())
        gallery = browser.find_element(By.ID, f"gallery-{x}-{y}")
        assert not gallery.is_displayed()
        browser.find_element(By.ID, f"cell-{x}-{y}").click()
        WebDriverWait(browser, 10).until(lambda b: gallery.is_displayed())
        image = gallery.find_element(By.TAG_NAME, "img")
        assert (
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 100
        )
        assert HOSTILE_OBJECT in gallery.text  # shown as text ...
        assert browser.execute_script("return window.__pwned === undefined")  # ... never run
        assert len(browser.find_elements(By.TAG_NAME, "script")) == 1  # only the page's own
        n_members = int(((assignments.cell_x == x) & (assignments.cell_y == y)).sum())
        assert len(gallery.find_elements(By.CSS_SELECTOR, "table.members tbody tr")) == n_members
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert Image.open(tmp_path / "report.png").size[0] > 0
    assert (index.parent / "img" / f"cell_{x}_{y}.png").exists()
    assert (index.parent / "img" / "prototype_map.png").exists()


def test_evaluate_scores_desom_and_the_baselines(lake, config, tmp_path):
    from desomspark.evaluation.baselines import BaselineConfig

    table = evaluate(lake, config, tmp_path, BaselineConfig(epochs=3))
    assert list(table["method"]) == [
        "DESOM-1 + DESOM-2 (cells)",
        "5-NN on QA numbers (classical)",
        "k-means on QA numbers",
        "5-NN on histo-vectors (Hellinger)",
        "5-NN on DESOM-2's input",
        "pixel PCA + k-means",
        "PCA + agglomerative (Ward)",
        "PCA + affinity propagation",
        "conv AE + k-means",
        "VAE latent + k-means",
    ]
    by = table.set_index("method")
    k = by.loc["DESOM-1 + DESOM-2 (cells)", "clusters"]
    same_k = [
        "k-means on QA numbers",
        "pixel PCA + k-means",
        "PCA + agglomerative (Ward)",
        "conv AE + k-means",
        "VAE latent + k-means",
    ]
    assert (by.loc[same_k, "clusters"] == k).all()  # same number of clusters as DESOM-2 cells
    # every method has the leave-one-out neighbour scores; k-NN methods make no clusters
    neighbour = ["neighbour_accuracy", "neighbour_accuracy_6", "neighbour_good_bad", "neighbour_good_bad_6"]
    assert table[neighbour].apply(lambda c: c.between(0, 1)).all().all()
    knn = ["5-NN on QA numbers (classical)", "5-NN on histo-vectors (Hellinger)", "5-NN on DESOM-2's input"]
    assert by.loc[knn, "purity"].isna().all()
    clustered = table[table["clusters"].notna()]
    assert clustered[["purity", "nmi", "accuracy"]].apply(lambda c: c.between(0, 1)).all().all()
    assert pd.read_csv(tmp_path / "evaluation.csv").shape == (10, 11)
    assert k == lake.read("assignments").to_pandas()["cell"].nunique()
    md = (tmp_path / "evaluation.md").read_text()
    assert md.count("\n|") >= 9 and "Confusion" in md and "per true class" in md
    confusion = pd.read_csv(tmp_path / "confusion_desom2.csv", index_col=0)
    assert confusion.to_numpy().sum() == len(lake.read("assignments"))
    assert Image.open(tmp_path / "tsne.png").size == (630, 540)
    # the classical numbers sort this night well: operators' 5-NN beats chance by far
    assert by.loc["5-NN on QA numbers (classical)", "neighbour_accuracy"] > 0.5
    # the point of the method: cells sort exposures by quality better than clustering their pixels
    desom, pixel_pca = by.loc["DESOM-1 + DESOM-2 (cells)", "purity"], by.loc["pixel PCA + k-means", "purity"]
    assert desom > pixel_pca, table.to_string()
