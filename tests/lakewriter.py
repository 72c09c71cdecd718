"""A writer of a lake's exposures, run as its own process by tests/test_lake.py.

    python tests/lakewriter.py LAKE night NIGHT E1,E2,...     stage and commit the night whole
    python tests/lakewriter.py LAKE batch NIGHT ID E1,E2,...  stage and commit a micro-batch
    python tests/lakewriter.py LAKE hold READY_FILE           take the lock, say so, wait on stdin

Each exposure gets one row in ``exposures`` and two in ``ccds``, so a row lost or doubled in
either table shows.  ``DESOMSPARK_CRASH_AT`` kills the process at a named commit point;
``NO_EXCHANGE=1`` makes the commit use two renames, as it would where renameat2 is missing.
"""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from desomspark.lake import commit, schema
from desomspark.lake.layout import Lake


def rows(table: str, exposures: list[str], tag: str) -> pa.Table:
    """Rows of ``table`` (``exposures`` or ``ccds``) for ``exposures``; ``path`` tells the writer."""
    copies = 1 if table == "exposures" else 2
    data = [
        {"exposure_id": e, "path": f"{tag}/{e}.fits", "hdu_index": k + 1}
        for e in exposures
        for k in range(copies)
    ]
    names = [f.name for f in schema.TABLES[table] if f.name != "night"]
    arrays = {n: [d.get(n) for d in data] for n in names}
    return pa.Table.from_pydict(arrays, schema=pa.schema([schema.TABLES[table].field(n) for n in names]))


def stage(lake: Lake, staging: str, night: str, exposures: list[str], tag: str) -> None:
    for table in ("exposures", "ccds"):
        with lake.open(staging, table, f"night={night}", "part-00000.parquet", mode="wb") as fh:
            pq.write_table(rows(table, exposures, tag), fh)


def main(argv: list[str]) -> None:
    lake, what = Lake(argv[0]), argv[1]
    if os.environ.get("NO_EXCHANGE"):
        commit._exchange = lambda a, b: False
    if what == "hold":
        with lake.lock():
            open(argv[2], "w").close()
            sys.stdin.read()
        return
    night = argv[2]
    if what == "night":
        staging = lake.new_staging(replaces=["exposures", "ccds"])
        if os.environ.get("LATE_BATCH"):  # another writer commits while this run computes
            main([lake.root, "batch", night, *os.environ.pop("LATE_BATCH").split(" ")])
        stage(lake, staging, night, argv[3].split(","), "night")
        lake.commit_nights(staging, ["exposures", "ccds"], [night])
    else:
        staging = lake.new_staging()
        stage(lake, staging, night, argv[4].split(","), f"batch{argv[3]}")
        lake.commit_batch(staging, ["exposures", "ccds"], argv[3])


if __name__ == "__main__":
    main(sys.argv[1:])
