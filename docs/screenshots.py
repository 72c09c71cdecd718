"""The README's console screenshots, taken from a demo lake in headless Chromium.

The demo's cells are labelled as an expert would label them: each by the majority true class of
its members (the simulator's truth), so that the map coloured by label shows what sorting looks
like.  Then ``desomspark serve`` is started and the map page and the fullest cell's page are
saved as ``docs/console.png`` and ``docs/console-cell.png``.

Run (after ``desomspark demo --lake DIR``): python docs/screenshots.py --lake DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from desomspark import registry
from desomspark.config import load_config
from desomspark.lake.layout import Lake
from desomspark.serve.explore import label_cells

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the test suite's browser and port helpers
from localcluster import free_port  # noqa: E402
from tools import open_browser  # noqa: E402


def label_by_truth(lake: Lake) -> tuple[int, int]:
    """Label every cell of the champion map by its members' majority true class; the fullest cell."""
    desom2 = registry.registered(lake, load_config(), "desom2")
    cells = lake.read("assignments", columns=["night", "exposure_id", "cell_x", "cell_y"]).to_pandas()
    truth = lake.read("exposures", columns=["night", "exposure_id", "truth_label"]).to_pandas()
    cells = cells.merge(truth, on=["night", "exposure_id"]).dropna(subset=["truth_label"])
    for (x, y), members in cells.groupby(["cell_x", "cell_y"]):
        label = members["truth_label"].value_counts().index[0]
        label_cells(lake, desom2.version, [(int(x), int(y))], str(label), desom2.map_shape)
    fullest = cells.groupby(["cell_x", "cell_y"]).size().idxmax()
    return int(fullest[0]), int(fullest[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lake", required=True)
    args = parser.parse_args()
    lake = Lake(args.lake)
    x, y = label_by_truth(lake)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "desomspark.cli", "serve", "--lake", lake.root, "--port", str(port), "-q"]
    )
    from selenium.webdriver.support.ui import WebDriverWait

    browser = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("serve did not start") from None
                time.sleep(0.2)
        browser = open_browser(Path(tempfile.mkdtemp()))
        for path, name in (("/map", "console.png"), (f"/cell/{x}/{y}", "console-cell.png")):
            browser.get(url + path)
            WebDriverWait(browser, 60).until(  # the images on screen have arrived (the rest load lazily)
                lambda b: b.execute_script(
                    "return [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
                    ".every(i => i.complete)"
                )
            )
            browser.save_screenshot(str(HERE / name))
            print(f"wrote docs/{name} from {path}")
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
