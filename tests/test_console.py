"""The astronomer's console (``desomspark serve``): a real gunicorn server on 127.0.0.1, a real Chromium.

The lake is the report's (36 mapped exposures, one with a hostile OBJECT
header).  The tests label cells and undo, so that they leave its labels as
they found them.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import HOSTILE_OBJECT
from localcluster import free_port
from tools import child_env, open_browser

from desomspark.lake.queries import current_labels
from desomspark.serve import plots
from desomspark.serve.console import create_app
from desomspark.serve.explore import export
from desomspark.stages.nightly import run_assign


class Console:
    """``desomspark serve`` in its own process, up once ``/healthz`` answers."""

    def __init__(self, lake, log, host: str = "127.0.0.1", **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "desomspark.cli",
                "serve",
                "--lake",
                lake.root,
                "--host",
                host,
                "--port",
                str(self.port),
            ],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            env=child_env(**env),
        )

    def wait_up(self, timeout: float = 180) -> "Console":
        deadline = time.time() + timeout
        while True:
            assert self.proc.poll() is None, f"serve exited:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=10):
                    return self
            except OSError:
                assert time.time() < deadline, (
                    f"serve not up after {timeout} s:\n{self.log.read_text()[-3000:]}"
                )
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _request(url: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of a GET, or of a form POST when ``data`` is given; redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    body = None if data is None else "&".join(f"{k}={v}" for k, v in data.items()).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def console(mapped_lake, tmp_path_factory):
    server = Console(mapped_lake, tmp_path_factory.mktemp("console") / "serve.log").wait_up()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hostile(mapped_lake):
    """The exposure whose OBJECT header holds a script, and its cell."""
    exposures = mapped_lake.read("exposures").to_pandas()
    row = exposures[exposures["object"] == HOSTILE_OBJECT].iloc[0]
    assigned = mapped_lake.read("assignments").to_pandas().set_index("exposure_id").loc[row.exposure_id]
    return row.night, row.exposure_id, int(assigned.cell_x), int(assigned.cell_y)


def _exported(lake, tmp_path, x: int, y: int) -> pd.DataFrame:
    export(lake, str(tmp_path / "export.csv"), "csv")
    table = pd.read_csv(tmp_path / "export.csv")
    return table[(table["cell_x"] == x) & (table["cell_y"] == y)]


def test_label_a_cell_in_the_browser_and_undo(console, mapped_lake, hostile, spark, config, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    night, exposure_id, x, y = hostile
    browser = open_browser(tmp_path)
    try:
        for by in ("count", "novelty", "label"):  # every cell's text readable on its colour (WCAG AA)
            browser.get(f"{console.url}/map?by={by}")
            cells = browser.find_elements(By.CSS_SELECTOR, "a.cell")
            assert cells
            for cell in cells:
                text, back = (_css_hex(cell.value_of_css_property(p)) for p in ("color", "background-color"))
                assert plots.contrast_ratio(text, back) >= 4.5, (by, cell.get_attribute("id"), text, back)
        # one image per occupied cell (its most central member's focal plane), a bar per median, a legend
        images = [cell.find_elements(By.CSS_SELECTOR, "img.central") for cell in cells]
        assert all(len(found) == 1 for found in images)
        assert all(len(cell.find_elements(By.CSS_SELECTOR, "span.bar")) == 3 for cell in cells)
        assert "seeing, PSF FWHM (arcsec)" in browser.find_element(By.ID, "map-legend").text
        for found in images[:3]:
            with urllib.request.urlopen(found[0].get_attribute("src"), timeout=60) as answer:
                assert answer.read(8) == b"\x89PNG\r\n\x1a\n"
        browser.find_element(By.ID, f"cell-{x}-{y}").click()
        WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith(f"/cell/{x}/{y}"))
        mosaic = browser.find_element(By.CSS_SELECTOR, f'img[src$="/{exposure_id}/mosaic.png"]')
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", mosaic)
        )
        assert browser.execute_script("return arguments[0].naturalWidth", mosaic) > 100  # 2x2 CCDs of 128 px
        assert HOSTILE_OBJECT in browser.find_element(By.TAG_NAME, "body").text  # shown as text ...
        assert browser.execute_script("return window.__pwned === undefined")  # ... never run
        assert browser.find_elements(By.TAG_NAME, "script") == []
        assert browser.find_element(By.ID, "label").text == "(none)"
        # the full-resolution window, one click away, opens at its native size
        browser.find_element(By.CSS_SELECTOR, f'a.full[href$="/{exposure_id}/window.png"]').click()
        WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith("/window.png"))
        window = browser.find_element(By.TAG_NAME, "img")
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", window)
        )
        natural, shown = browser.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].getBoundingClientRect().width]", window
        )
        assert natural >= 256 and shown == natural  # 500 px of a 512 px CCD, one screen pixel each
        browser.back()
        WebDriverWait(browser, 30).until(lambda b: b.current_url.endswith(f"/cell/{x}/{y}"))

        field = browser.find_element(By.ID, "label-input")
        field.clear()
        field.send_keys("BT")
        browser.find_element(By.ID, "label-submit").click()
        # the form's page is replaced by the cell's: an element read as it goes is stale, not a failure
        WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda b: b.find_element(By.ID, "label").text == "BT"
        )
        browser.save_screenshot(str(tmp_path / "cell.png"))
        labelled = _exported(mapped_lake, tmp_path, x, y)
        assert len(labelled) >= 1 and set(labelled["label"]) == {"BT"}  # export carries it
        assigned = run_assign(spark, mapped_lake, config)
        assert set(assigned[(assigned.cell_x == x) & (assigned.cell_y == y)]["label"]) == {"BT"}  # and assign

        browser.find_element(By.ID, "undo").click()
        WebDriverWait(browser, 30, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda b: b.find_element(By.ID, "label").text == "(none)"
        )
        assert _exported(mapped_lake, tmp_path, x, y)["label"].isna().all()  # undo restores

        browser.get(f"{console.url}/map")
        assert f"/cell/{x}/{y}" in browser.find_element(By.ID, f"cell-{x}-{y}").get_attribute("href")
        browser.get(f"{console.url}/exposure/{night}/{exposure_id}")
        assert HOSTILE_OBJECT in browser.find_element(By.TAG_NAME, "body").text
        first = browser.find_elements(By.CSS_SELECTOR, "table.similar tbody tr td a")[0]
        assert first.text == exposure_id  # itself first
        assert browser.execute_script("return window.__pwned === undefined")
    finally:
        browser.quit()
    run_assign(spark, mapped_lake, config)  # the lake's assignments as the other tests expect them


def test_tables_download_as_csv_and_bad_requests_get_clear_errors(console, mapped_lake, hostile):
    night, exposure_id, x, y = hostile
    status, body = _request(f"{console.url}/cell/{x}/{y}?format=csv")
    members = pd.read_csv(io.StringIO(body))
    assigned = mapped_lake.read("assignments").to_pandas()
    assert status == 200 and exposure_id in set(members["exposure_id"].astype(str))
    assert len(members) == int(((assigned.cell_x == x) & (assigned.cell_y == y)).sum())
    status, body = _request(f"{console.url}/nights?format=csv")
    assert status == 200 and night in body and "divergence" in body.splitlines()[0]
    status, body = _request(f"{console.url}/map?format=csv")
    assert (
        status == 200
        and len(pd.read_csv(io.StringIO(body))) == assigned.groupby(["cell_x", "cell_y"]).ngroups
    )

    status, body = _request(f"{console.url}/exposure/{night}/{exposure_id}?format=csv&table=fields")
    assert status == 200 and HOSTILE_OBJECT in body  # CSV is data, not a page
    status, body = _request(f"{console.url}/nights?format=csv&table=alerts")
    assert status == 200 and body.splitlines()[0].startswith("night,alert_id,rule")

    assert _request(f"{console.url}/cell/99/0")[0] == 404
    status, body = _request(f"{console.url}/cell/99/0")
    assert "outside the" in body
    versions = mapped_lake.read("assignments", columns=["desom1_version", "desom2_version"]).to_pylist()[0]
    # the error page names the map it was asked of, as every page does
    assert f"desom2 v{versions['desom2_version']} on desom1 v{versions['desom1_version']}" in body
    assert _request(f"{console.url}/map?by=mood")[0] == 400
    assert _request(f"{console.url}/cell/{x}/{y}?page=9")[0] == 404
    assert _request(f"{console.url}/exposure/{night}/no-such-exposure")[0] == 404
    assert _request(f"{console.url}/exposure/..%2F..%2Fetc/passwd")[0] == 404
    assert _request(f"{console.url}/img/exposure/{night}/{exposure_id}/secrets.png")[0] == 404
    assert _request(f"{console.url}/prototypes?node=a,b")[0] == 400
    status, body = _request(f"{console.url}/prototypes?node=0,0&min_fraction=0")
    assert status == 200 and "exposures" in body
    # a form on another site posting to the console is refused, whatever it says
    before = len(mapped_lake.read("labels"))
    status, _ = _request(
        f"{console.url}/cell/{x}/{y}/label", {"label": "Good"}, {"Origin": "http://evil.example"}
    )
    assert status == 403 and len(mapped_lake.read("labels")) == before


def test_bound_elsewhere_the_console_needs_its_token(mapped_lake, hostile, tmp_path):
    _, _, x, y = hostile
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "desomspark.cli",
            "serve",
            "--lake",
            mapped_lake.root,
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert refused.returncode != 0 and "DESOMSPARK_CONSOLE_TOKEN" in refused.stderr

    server = Console(
        mapped_lake, tmp_path / "serve.log", host="0.0.0.0", DESOMSPARK_CONSOLE_TOKEN="s3cret"
    ).wait_up()
    try:

        def labels():
            return len(mapped_lake.read("labels"))

        before = labels()

        def answer(*args):
            return (_request(*args), server.log.read_text()[-2000:])

        assert answer(f"{server.url}/cell/{x}/{y}")[0][0] == 200  # reading needs nothing
        (status, body), log = answer(f"{server.url}/cell/{x}/{y}/label", {"label": "Good"})
        assert status == 403 and "token" in body, (status, body, log)
        (status, body), log = answer(
            f"{server.url}/cell/{x}/{y}/label", {"label": "Good"}, {"Authorization": "Bearer wrong"}
        )
        assert status == 403, (status, body, log)
        assert labels() == before  # nothing changed
        bearer = {"Authorization": "Bearer s3cret"}
        (status, body), log = answer(f"{server.url}/cell/{x}/{y}/label", {"label": "Good"}, bearer)
        assert status == 303, (status, body, log)
        version = mapped_lake.read("assignments").to_pandas()["desom2_version"].iloc[0]
        assert (
            current_labels(mapped_lake, version).set_index(["cell_x", "cell_y"]).loc[(x, y), "label"]
            == "Good"
        )
        (status, body), log = answer(f"{server.url}/cell/{x}/{y}/undo", {}, bearer)
        assert status == 303, (status, body, log)
        assert (x, y) not in set(
            zip(*[current_labels(mapped_lake, version).dropna()[c] for c in ("cell_x", "cell_y")])
        )
    finally:
        server.stop()


def test_a_cell_pages_its_members(mapped_lake, config, hostile):
    """Paging, through Flask's test client on the same application (two members a page)."""
    _, _, x, y = hostile
    cfg = replace(config, console=replace(config.console, page_size=2))
    client = create_app(mapped_lake, cfg).test_client()
    n = int(client.get(f"/cell/{x}/{y}?format=csv").data.decode().count("\n")) - 1
    pages = -(-n // 2)
    seen = []
    for page in range(1, pages + 1):
        html = client.get(f"/cell/{x}/{y}?page={page}").data.decode()
        seen += [line for line in html.splitlines() if "/mosaic.png" in line]
    assert len(seen) == n and len(set(seen)) == n
    assert client.get(f"/cell/{x}/{y}?page={pages + 1}").status_code == 404


def test_the_distance_is_shown_in_the_unit_of_the_map_that_made_it(mapped_lake, config, hostile):
    """A map trained before cell scales (the shipped default: no ``novelty_quantile`` in its record)
    serves latent units, and the cell and exposure pages say so; a map trained with them serves its
    distance over the cell's own scale, and the pages say that."""
    from desomspark.serve.console.routes import column_units

    _, _, x, y = hostile
    app = create_app(mapped_lake, config)
    client = app.test_client()
    assert "distance (latent units)" in client.get(f"/cell/{x}/{y}").data.decode()
    state = app.extensions["desomspark"]["view"].map()
    member = state.cell(x, y).iloc[0]
    page = client.get(f"/exposure/{member['night']}/{member['exposure_id']}").data.decode()
    assert f"novelty {member['distance']:.3f} (latent units)" in page
    shipped = state.desom2
    assert shipped.novelty_quantile is None
    trained = replace(shipped, metadata=shipped.metadata | {"novelty_quantile": 0.9})
    assert column_units(trained)["distance"] == "x the cell's p90 distance"
    assert column_units(shipped)["distance"] == "latent units"


def test_downloaded_tables_open_as_data_in_a_spreadsheet():
    from desomspark.serve.console import spreadsheet_safe

    frame = pd.DataFrame(
        {"label": ['=HYPERLINK("http://x")', "Good", "@SUM(A1)", None], "offset": [-1.5, 2.0, 0.0, 1.0]}
    )
    safe = spreadsheet_safe(frame)
    assert safe["label"].tolist() == ['\'=HYPERLINK("http://x")', "Good", "'@SUM(A1)", None]
    assert safe["offset"].tolist() == [-1.5, 2.0, 0.0, 1.0]
    assert frame["label"].iloc[0].startswith("=")  # the caller's frame untouched


def test_with_a_token_the_login_cookie_labels_and_other_sites_and_names_are_refused(
    mapped_lake, config, hostile
):
    """The guard of a console bound beyond loopback, through Flask's test client: the cookie that
    ``/login`` sets is the token; a POST from another site is refused even with the token (Origin or
    Referer); a Host the console was not started for is refused (DNS rebinding)."""
    _, _, x, y = hostile
    cfg = replace(config, console=replace(config.console, hosts=("console.example.org",)))
    client = create_app(mapped_lake, cfg, token="s3cret", host="0.0.0.0").test_client()
    before = mapped_lake.read("labels").num_rows
    url = f"/cell/{x}/{y}/label"
    assert client.post(url, data={"label": "Good"}).status_code == 403  # no token yet
    assert client.post("/login", data={"token": "wrong"}).status_code == 403
    login = client.post("/login", data={"token": "s3cret"})
    assert login.status_code == 303 and "HttpOnly" in login.headers["Set-Cookie"]
    for header in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}):
        refused = client.post(url, data={"label": "Good"}, headers=header)  # the cookie rides along
        assert refused.status_code == 403 and b"another site" in refused.data
    bearer = {"Authorization": "Bearer s3cret"}
    for host in ("rebound.evil.example", "console.example.org.evil.example"):
        refused = client.post(url, data={"label": "Good"}, headers={**bearer, "Host": host})
        assert refused.status_code == 403 and b"console.hosts" in refused.data
    assert mapped_lake.read("labels").num_rows == before  # nothing got through
    named = client.get(f"/cell/{x}/{y}", headers={"Host": "console.example.org:8050"})
    assert named.status_code == 200
    same_site = {"Origin": "http://localhost"}
    assert client.post(url, data={"label": "Good"}, headers=same_site).status_code == 303  # the cookie
    assert client.post(f"/cell/{x}/{y}/undo", headers=same_site).status_code == 303
    assert mapped_lake.read("labels").num_rows == before + 2


def _css_hex(value: str) -> str:
    """``rgb(r, g, b)`` or ``rgba(r, g, b, a)``, as a browser reports a colour, as ``#rrggbb``."""
    r, g, b = (int(float(v)) for v in value[value.index("(") + 1 : value.index(")")].split(",")[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def test_cell_text_colours_meet_wcag_aa_on_every_colour_scale():
    from desomspark.serve.console.view import cell_colours

    cells = pd.DataFrame(
        dict(cell_x=range(50), cell_y=0, count=range(1, 51), novelty=np.linspace(0.0, 3.0, 50))
    )
    labels = {(i, 0): f"label{i}" for i in range(0, 50, 3)}
    for by in ("count", "novelty", "label"):
        for colour in cell_colours(cells, labels, by).values():
            assert plots.contrast_ratio(plots.text_colour(colour), colour) >= 4.5, (by, colour)
    assert plots.text_colour("#08306b") == "#ffffff" and plots.text_colour("#d0d4dc") == "#000000"
    assert round(plots.contrast_ratio("#000000", "#ffffff"), 1) == 21.0


def test_the_window_zooms_with_square_pixels(mapped_lake, config):
    """The exposure page links a zoomed window: the full-resolution PNG at a whole magnification,
    unsmoothed; a zoom that is not offered is a clear 400, an exposure without a window a 404."""
    from PIL import Image

    client = create_app(mapped_lake, config).test_client()
    row = mapped_lake.read("assignments", columns=["night", "exposure_id"]).to_pylist()[0]
    page = f"/exposure/{row['night']}/{row['exposure_id']}"
    assert f'href="{page}/window?zoom=4"' in client.get(page).data.decode()
    native = Image.open(io.BytesIO(client.get(f"/img{page}/window.png").data)).size
    html = client.get(f"{page}/window?zoom=4").data.decode()
    assert f"width:{4 * native[0]}px;height:{4 * native[1]}px" in html and "pixelated" in html
    assert '<a class="zoom" href="?zoom=8">' in html and "<b>x4</b>" in html
    refused = client.get(f"{page}/window?zoom=3")
    assert refused.status_code == 400 and "zoom must be one of 1, 2, 4, 8" in refused.data.decode()
    assert client.get(f"/exposure/{row['night']}/nope/window").status_code == 404


def test_every_exposure_with_psf_stars_has_its_stacked_star(mapped_lake, config, hostile):
    """The stacked star (the median of the PSF stars' stamps, stored per CCD at ingest) of each
    exposure that has PSF stars, and of a cell, as PNGs; none for an exposure without stars."""
    from PIL import Image

    from desomspark.ingest.qa import STACK_SIDE, decode_stack

    _, _, x, y = hostile
    client = create_app(mapped_lake, config).test_client()
    ccds = mapped_lake.read("ccds", columns=["night", "exposure_id", "n_stars", "psf_stack"]).to_pandas()
    for row in ccds.itertuples():
        stack = decode_stack(row.psf_stack)
        assert (stack is not None) == (row.n_stars > 0)
        if stack is not None:  # unit peak, its light centred (a donut's too: its ring is round)
            assert stack.shape == (STACK_SIDE, STACK_SIDE) and stack.max() == 1.0
            grid = np.arange(STACK_SIDE) - STACK_SIDE // 2
            light = np.clip(stack, 0, None)
            centre = (light.sum(1) @ grid, light.sum(0) @ grid) / light.sum()
            assert np.hypot(*centre) < 1.5, (row.exposure_id, centre)
    stars = ccds.groupby(["night", "exposure_id"])["n_stars"].sum()
    assert (stars > 0).any()
    for (night, exposure_id), n in stars.items():
        answer = client.get(f"/img/exposure/{night}/{exposure_id}/star.png")
        assert answer.status_code == (200 if n > 0 else 404), (exposure_id, n)
        if n > 0:
            assert Image.open(io.BytesIO(answer.data)).size == (4 * STACK_SIDE, 4 * STACK_SIDE)
    assert client.get(f"/img/cell/{x}/{y}/star.png").status_code == 200
    assert 'id="cell-star"' in client.get(f"/cell/{x}/{y}").data.decode()
