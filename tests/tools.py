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


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a command a test starts, without the MLflow store this process used last.

    ``mlflow.set_tracking_uri`` exports ``MLFLOW_TRACKING_URI``; conftest removes it around each
    test, but a module-scoped fixture runs before that, so its commands must drop it themselves.
    """
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | extra
