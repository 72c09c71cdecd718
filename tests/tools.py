"""Outside tools some tests need (SExtractor, Chromium, Airflow): skip where missing, fail where required.

``scripts/install_test_tools.sh`` installs them; ``.ci/run`` sets
``DESOMSPARK_REQUIRE_TOOLS=1`` so that a tool missing on CI fails the run
instead of skipping its tests quietly.  A developer's laptop without them
still runs the rest.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_TOOLS = "DESOMSPARK_REQUIRE_TOOLS"


def require_tool(found: bool, missing: str) -> None:
    """Go on when ``found``; else skip the test, or fail it when the environment requires the tools."""
    if found:
        return
    if os.environ.get(REQUIRE_TOOLS) == "1":
        pytest.fail(f"{missing}, and {REQUIRE_TOOLS}=1 requires it", pytrace=False)
    pytest.skip(missing)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a command a test starts, without the MLflow store this process used last.

    ``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI``; conftest removes it around each
    test, but a module-scoped fixture runs before that, so its commands must drop it themselves.
    """
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | extra


def open_browser(tmp_path):
    """A headless Chromium driven by Selenium (skipped, or failed under CI, when it is not installed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    require_tool(
        bool(chromium and driver),
        "chromium / chromedriver not installed (scripts/install_test_tools.sh installs them)",
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def renumbered_copy(src, dst, offset: int):
    """Copies of the FITS files in ``src`` under ``dst`` with EXPNUM + ``offset``: the same pixels
    as other exposures (an exposure id is unique in a lake, whatever night its file claims)."""
    import shutil
    from pathlib import Path

    from astropy.io import fits

    dst = Path(dst)
    dst.mkdir(parents=True)
    for path in sorted(Path(src).glob("*.fits")):
        copy = dst / path.name
        shutil.copy(path, copy)
        with fits.open(copy, mode="update") as hdul:
            hdul[0].header["EXPNUM"] = int(hdul[0].header["EXPNUM"]) + offset
    return dst
