"""Outside tools some tests need (SExtractor, Chromium, Airflow): skip where missing, fail where required.

``scripts/install_test_tools.sh`` installs them; ``.ci/run`` sets
``DESOMSPARK_REQUIRE_TOOLS=1`` so that a tool missing on CI fails the run
instead of skipping its tests quietly.  A developer's laptop without them
still runs the rest.
"""
from __future__ import annotations

import os

import pytest

REQUIRE_TOOLS = "DESOMSPARK_REQUIRE_TOOLS"


def require_tool(found: bool, missing: str) -> None:
    """Go on when ``found``; else skip the test, or fail it when the environment requires the tools."""
    if found:
        return
    if os.environ.get(REQUIRE_TOOLS) == "1":
        pytest.fail(f"{missing}, and {REQUIRE_TOOLS}=1 requires it", pytrace=False)
    pytest.skip(missing)
