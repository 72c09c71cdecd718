"""From map to decision: verdicts, exposure labels, labels a new map inherits, label-next, the API.

Pure parts first (no lake), then a copy of the report's mapped night (36 exposures, 7 classes):
the CLI, the verdicts feed, a retrained map, and the JSON API on a real gunicorn.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from test_console import Console, _request
from tools import child_env

from desomspark import registry
from desomspark.decide.active import label_next
from desomspark.decide.labels import own_labels, resolve, suggestions
from desomspark.decide.teff import teff_factors
from desomspark.decide.verdict import DecideSettings, decide
from desomspark.decide.vote import calibration_error, fit_vote, kernel_vote
from desomspark.errors import UserError
from desomspark.evaluation.holdout import label_cells_with, majority_labels, true_classes
from desomspark.lake.layout import Lake
from desomspark.stages.nightly import run_assign
from desomspark.stages.train_desom2 import train_desom2
from desomspark.stages.verdicts import decide_nights, resolved_members

T = pd.Timestamp


def _log(*rows):
    keys = ["night", "exposure_id", "label", "source", "desom2_version", "cell_x", "cell_y", "labelled_at"]
    return pd.DataFrame([dict(zip(keys, r)) for r in rows])


def test_an_exposure_label_beats_its_cell_and_an_inherited_one_and_a_removal_falls_back():
    log = _log(
        ("n", "a", "Good", "inherited", "1", 0, 0, T("2026-01-01", tz="UTC")),
        ("n", "a", "BT", "exposure", "2", None, None, T("2026-01-02", tz="UTC")),
        ("n", "b", "RBT", "inherited", "1", 1, 0, T("2026-01-01", tz="UTC")),
        ("n", "c", "BT", "exposure", "2", None, None, T("2026-01-01", tz="UTC")),
        ("n", "c", None, "exposure", "2", None, None, T("2026-01-03", tz="UTC")),  # removed
    )
    own = own_labels(log).set_index("exposure_id")
    assert own.loc["a", "own_label"] == "BT" and own.loc["b", "own_from"] == "desom2 v1 cell 1,0"
    assert "c" not in own.index
    members = pd.DataFrame(
        {"night": "n", "exposure_id": ["a", "b", "c", "d"], "cell_x": [5, 5, 5, 6], "cell_y": 0}
    )
    out = resolve(members, {(5, 0): "Good"}, own.reset_index()).set_index("exposure_id")
    assert list(out["label"]) == ["BT", "Good", "Good", None]
    assert list(out["label_source"]) == ["exposure", "cell", "cell", None]
    # a cell of a new map with no label of its own is offered its members' labels
    fresh = resolve(members, {}, own.reset_index())
    offered = suggestions(fresh).set_index(["cell_x", "cell_y"])
    assert offered.loc[(5, 0), "support"] == 2 and offered.loc[(5, 0), "agreement"] == 0.5
    assert (6, 0) not in offered.index


def test_the_vote_is_honest_far_from_its_labels_and_calibrated_near_them():
    rng = np.random.default_rng(0)
    good, bad = rng.normal(0, 0.1, (40, 2)), rng.normal(3, 0.1, (40, 2))
    z = np.vstack([good, bad])
    y = np.r_[np.zeros(40), np.ones(40)]
    groups = np.repeat(np.arange(8), 10)
    vote = fit_vote(z, y, groups, spacing=0.05, settings=DecideSettings())
    p, evidence = vote.predict(np.array([[0.0, 0.0], [3.0, 3.0], [40.0, -40.0]]))
    assert p[0] < 0.05 and p[1] > 0.95 and evidence[:2].min() > 5
    assert evidence[2] < 1e-6 and abs(p[2] - vote.prior) < 1e-6  # novel: the prior, with no evidence
    pv, _ = kernel_vote(z, z, y, vote.bandwidth, vote.prior, vote.settings)
    assert calibration_error(pv, y) < 0.05
    assert calibration_error(np.full(80, 0.9), y) == pytest.approx(0.4)


def test_decisions_follow_the_expert_then_the_rules_then_the_cell_then_the_vote():
    s = DecideSettings(rules={"max_fwhm": 1.5})
    frame = pd.DataFrame(
        {
            "label": ["Good", "Good", "BT", None, None, None, "Unsure"],
            "label_source": ["exposure", "cell", "cell", None, None, None, "cell"],
            "cell_x": 0,
            "cell_y": 0,
            "p_vote": [0.9, 0.1, 0.5, 0.95, 0.05, 0.5, 0.1],
            "evidence": [5.0, 5, 5, 5, 0.1, 5, 5],
            "novel": False,
            "novelty_text": "",
            "fwhm": [2.0, 2.0, 0.7, 0.7, 0.7, 0.7, 0.7],
        }
    )
    out = decide(frame, prior=0.5, s=s)
    assert list(out["decision"]) == ["accept", "retake", "retake", "retake", "review", "review", "review"]
    assert out["reason"][1].startswith("rule max_fwhm") and out["p_bad"][0] == s.label_noise
    assert list(out["basis"]) == ["label", "rule", "label", "vote", "vote", "vote", "label"]


def test_teff_factors_and_label_next():
    f = teff_factors([1.4], [16.0], [2.0], [26.0], [0.7], [8.0], [26.5])
    assert f["seeing_factor"][0] == pytest.approx(0.25) and f["sky_factor"][0] == pytest.approx(1.0)
    assert f["transparency"][0] == pytest.approx(10 ** (-0.2)) and f["teff"][0] == pytest.approx(
        0.25 * 10**-0.4
    )
    assert np.isnan(teff_factors([0.7], [8.0], [1.0], [np.nan], [0.7], [8.0], [26.5])["transparency"][0])
    v = pd.DataFrame(
        {
            "exposure_id": list("abcdef"),
            "cell_x": [0, 0, 0, 1, 2, 2],
            "cell_y": 0,
            "p_bad": [0.5, 0.5, 0.5, 0.5, 0.02, 0.02],
            "evidence": [0.0, 0, 0, 0, 9, 9],
            "label_source": [None, None, None, None, "cell", "cell"],
            "basis": ["vote"] * 4 + ["label"] * 2,
            "decision": ["review"] * 4 + ["accept"] * 2,
        }
    )
    ranked = label_next(v, {(2, 0): "Good"}, ("Good",))
    assert list(zip(ranked["cell_x"], ranked["cell_y"])) == [(0, 0), (1, 0)]  # fuller first; (2,0) labelled


# --- on a lake -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lake(mapped_lake, tmp_path_factory):
    """A copy of the report's mapped night, its cells labelled by their majority true class."""
    root = tmp_path_factory.mktemp("decide") / "lake"
    shutil.copytree(mapped_lake.root, root, ignore=shutil.ignore_patterns("labels", "exposure_labels"))
    return Lake(str(root))


def _label_by_majority(lake, config):
    desom2 = registry.registered(lake, config, "desom2")
    label_cells_with(lake, desom2, majority_labels(lake, desom2))
    return desom2, resolved_members(lake, desom2).merge(true_classes(lake))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "desomspark.cli", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )


def test_the_verdicts_have_their_own_novelty_margin(lake, config):
    """decide.novelty_margin, not the alert rule's watch.novelty_margin, says which exposures their cell's
    label no longer decides: beyond it they go to review, with the distance in the reason."""
    desom2, members = _label_by_majority(lake, config)
    night = members["night"].iloc[0]
    watch = replace(config.watch, novelty_min_reference=10)  # the test night has 36 exposures
    reach = np.quantile(members["distance"], watch.novelty_quantile)
    margin = float(np.median(members["distance"]) / reach)  # the cut at the median distance
    tight = replace(config, watch=watch, decide=replace(config.decide, novelty_margin=margin))
    verdicts = decide_nights(lake, tight, [night]).merge(members[["exposure_id", "distance"]])
    by_cell = verdicts[(verdicts["label_source"] == "cell") & (verdicts["basis"] == "label")]  # no rule fired
    novel = by_cell["reason"].str.contains("but novel: distance")
    assert novel.any() and (~novel).any()
    assert (novel == (by_cell["distance"] > margin * reach)).all()
    assert (by_cell.loc[novel, "decision"] == "review").all()
    assert (by_cell.loc[~novel, "decision"] != "review").all()
    # the alert rule's margin plays no part: as tight as the verdicts', the same verdicts
    alerts_too = replace(tight, watch=replace(watch, novelty_margin=margin))
    again = decide_nights(lake, alerts_too, [night]).set_index("exposure_id")
    shown = verdicts.set_index("exposure_id").loc[again.index]
    assert (again[["decision", "reason"]] == shown[["decision", "reason"]]).all().all()
    loose = replace(tight, decide=replace(config.decide, novelty_margin=2.0))  # past every distance
    assert not decide_nights(lake, loose, [night])["reason"].str.contains("novel").any()
    with pytest.raises(UserError, match="novelty_margin must be > 0"):
        replace(config.decide, novelty_margin=0.0)


def test_a_streak_in_a_good_cell_labelled_by_itself_is_a_retake_and_the_feed_round_trips(
    lake, config, tmp_path
):
    desom2, members = _label_by_majority(lake, config)
    night = members["night"].iloc[0]
    good = (
        members[members["truth_label"] == "Good"].groupby(["cell_x", "cell_y"]).filter(lambda c: len(c) >= 2)
    )
    target = good.iloc[0]
    mates = good[(good["cell_x"] == target.cell_x) & (good["cell_y"] == target.cell_y)].iloc[1:]
    done = _cli(
        "label", "--lake", lake.root, "--exposure", f"{night}/{target.exposure_id}", "--label", "Streak"
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "feed.csv"
    done = _cli("verdicts", "--lake", lake.root, "--night", night, "--out", str(out))
    assert done.returncode == 0 and "retake" in done.stdout, done.stderr
    feed = pd.read_csv(out, dtype={"exposure_id": str, "night": str}).set_index("exposure_id")
    assert feed.loc[target.exposure_id, "decision"] == "retake"
    assert "by an expert" in feed.loc[target.exposure_id, "reason"]
    assert (feed.loc[list(mates["exposure_id"]), "decision"] == "accept").all()
    assert set(feed["decision"]) <= {"accept", "review", "retake"} and feed["p_bad"].between(0, 1).all()
    table = lake.read("verdicts", nights=[night]).to_pandas().set_index("exposure_id")
    assert len(table) == len(feed) and table.loc[target.exposure_id, "label_source"] == "exposure"
    as_json = tmp_path / "feed.json"
    assert (
        _cli(
            "verdicts", "--lake", lake.root, "--night", night, "--out", str(as_json), "--format", "json"
        ).returncode
        == 0
    )
    records = pd.DataFrame(json.loads(as_json.read_text())).set_index("exposure_id")
    pd.testing.assert_series_equal(records["decision"].sort_index(), feed["decision"].sort_index())
    # undo: the cell's label decides again
    assert (
        _cli("label", "--lake", lake.root, "--exposure", f"{night}/{target.exposure_id}", "--undo").returncode
        == 0
    )
    again = decide_nights(lake, config, [night]).set_index("exposure_id")
    assert again.loc[target.exposure_id, "decision"] == "accept"
    bad = _cli("label", "--lake", lake.root, "--exposure", f"{night}/nope", "--label", "BT")
    assert bad.returncode != 0 and "is not in" in bad.stderr and "Traceback" not in bad.stderr


def test_a_retrained_map_inherits_the_labels(spark, lake, config):
    """After another DESOM-2 is promoted and assign runs, labelled exposures keep their verdict and the
    new map's cells are offered their members' labels; promoted back, the old cells' labels hold."""
    old = registry.registered(lake, config, "desom2")
    if not lake.exists("labels"):
        _label_by_majority(lake, config)
    before = decide_nights(lake, config).set_index(["night", "exposure_id"])
    labelled = before[before["label_source"].notna()]
    short = replace(
        config, desom2=replace(config.desom2, map_shape=None, iterations=200, batch_size=12, seed=7)
    )
    new = train_desom2(lake, short)["version"]
    registry.promote(lake, config.mlflow, "desom2", new)
    try:
        run_assign(spark, lake, config)
        after = lake.read("verdicts").to_pandas().set_index(["night", "exposure_id"])
        assert set(after["desom2_version"]) == {new}
        kept = (after.loc[labelled.index, "decision"] == labelled["decision"]).mean()
        assert kept >= 0.95 and set(after.loc[labelled.index, "label_source"]) == {"inherited"}
        members = resolved_members(lake, registry.registered(lake, config, "desom2"))
        offered = suggestions(members)
        assert len(offered) >= 0.9 * members.groupby(["cell_x", "cell_y"]).ngroups
    finally:
        registry.promote(lake, config.mlflow, "desom2", old.version)
    run_assign(spark, lake, config)  # back on the old map: its own cell labels decide
    back = lake.read("verdicts").to_pandas()
    assert set(back["desom2_version"]) == {old.version} and (back["label_source"] != "inherited").all()


def _json(url, body=None, token=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_the_json_api_on_gunicorn_reads_and_writes_with_the_token(lake, config, tmp_path):
    server = Console(lake, tmp_path / "serve.log", DESOMSPARK_CONSOLE_TOKEN="s3cret").wait_up()
    try:
        api = server.url + "/api/v1"
        status, spec = _json(api + "/openapi.json")
        assert (
            status == 200
            and spec["openapi"].startswith("3.")
            and "/api/v1/cells/{x}/{y}/label" in spec["paths"]
        )
        status, nights = _json(api + "/nights")
        night = nights["nights"][0]["night"]
        status, tonight = _json(f"{api}/nights/{night}/exposures")
        exposures = pd.DataFrame(tonight["exposures"])
        assert status == 200 and len(exposures) == nights["nights"][0]["exposures"]
        assert {"decision", "p_bad", "reason", "teff", "fwhm"} <= set(exposures.columns)
        one = exposures["exposure_id"].iloc[0]
        status, cells = _json(api + "/cells")
        assert status == 200 and len(cells["cells"]) > 0 and "suggested" in cells["cells"][0]
        url = f"{api}/exposures/{night}/{one}/label"
        assert _json(url, {"label": "BadFocus"})[0] == 403  # no token
        assert _json(url, {"label": "BadFocus"}, token="wrong")[0] == 403
        status, row = _json(url, {"label": "BadFocus"}, token="s3cret")
        assert status == 200 and row["label"] == "BadFocus" and row["source"] == "exposure"
        status, shown = _json(f"{api}/exposures/{night}/{one}")
        assert shown["verdict"]["decision"] == "retake" and shown["label_history"][-1]["label"] == "BadFocus"
        assert _json(url, {"label": "x" * 65}, token="s3cret")[0] == 400
        assert (
            _request(url, {"label": "BT"}, {"Authorization": "Bearer s3cret"})[0] == 415
        )  # a form is not JSON
        assert _json(url, {"label": None}, token="s3cret")[0] == 200
        assert _json(f"{api}/nights/2026/exposures")[0] == 404
    finally:
        server.stop()


def test_without_a_token_the_console_answers_only_to_its_loopback_name(lake, config):
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends Host: evil.example
    and a matching Origin; the console refuses it, pages and writes alike."""
    from desomspark.serve.console import create_app

    client = create_app(lake, config).test_client()
    assert client.get("/map", headers={"Host": "127.0.0.1:8050"}).status_code == 200
    assert client.get("/api/v1/cells", headers={"Host": "evil.example:8050"}).status_code == 403
    before = lake.read("exposure_labels").num_rows
    night, exposure_id = lake.read("assignments").to_pandas()[["night", "exposure_id"]].iloc[0]
    answer = client.post(
        f"/api/v1/exposures/{night}/{exposure_id}/label",
        json={"label": "BT"},
        headers={"Host": "evil.example:8050", "Origin": "http://evil.example:8050"},
    )
    assert answer.status_code == 403 and lake.read("exposure_labels").num_rows == before


def test_the_vote_learns_from_nothing_once_every_label_is_undone():
    """A lake whose labels were all removed (undo) reads back ``own_from`` as all-null floats: the
    vote then has no labelled exposure, and says so, instead of failing."""
    from desomspark.config import load_config
    from desomspark.stages.verdicts import labelled_rows, settings_of

    members = pd.DataFrame(
        dict(
            night=["n", "n"],
            exposure_id=["a", "b"],
            cell_x=[0, 1],
            cell_y=[0, 0],
            label=[None, None],
            label_source=[None, None],
            own_from=[np.nan, np.nan],
        )
    )
    assert labelled_rows(members, settings_of(load_config())).empty
    members.loc[0, ["label", "label_source"]] = ["BT", "inherited"]
    known = labelled_rows(members, settings_of(load_config()))
    assert known["group"].tolist() == ["from "] and known["bad"].tolist() == [1.0]
