"""What astronomers do with the map: label cells, export, find similar exposures, filter by content.

* :func:`label_cell` appends to ``labels/`` (who, when, which DESOM-2 version);
  the last word on a cell wins.  Whatever reads results (``export``,
  ``similar``, the report) shows the current label at once; ``assign`` writes
  it into the table for past nights, ``nightly`` for new ones.
* :func:`export` writes exposure -> cell -> label.
* :func:`similar` ranks exposures by distance in DESOM-2's latent space
  (paper section 5.3: a content-based recommendation).
* :func:`filter_node` finds exposures rich in one DESOM-1 node (e.g. donuts).
"""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from desomspark.decide.labels import own_labels, pick
from desomspark.decide.teff import TEFF_COLUMNS
from desomspark.errors import UserError
from desomspark.ingest.qa import EXPOSURE_QA_COLUMNS
from desomspark.lake import labellog, schema
from desomspark.lake.layout import Lake
from desomspark.lake.queries import label_history, latent_vectors, with_current_labels
from desomspark.registry import RegisteredModel


def author() -> str:
    """Who is labelling: ``$DESOMSPARK_AUTHOR``, else the login name."""
    return os.environ.get("DESOMSPARK_AUTHOR") or getpass.getuser()


MAX_LABEL = 64


def valid_label(label: str) -> str:
    """``label`` if it is a usable name (1-64 printable characters, no space at either end), else a UserError.

    One rule for the command line and the console: a label is a column value
    every reader shows and a spreadsheet opens, not free text.
    """
    if not label:
        raise UserError("a label cannot be empty (use --unlabel to remove one)")
    if len(label) > MAX_LABEL:
        raise UserError(f"a label is at most {MAX_LABEL} characters, not {len(label)}")
    if not label.isprintable():
        raise UserError(f"a label is printable characters only (no newline or control character): {label!r}")
    if label != label.strip():
        raise UserError(f"a label has no space at its start or end: {label!r}")
    return label


def known_labels(lake: Lake, vocabulary: dict[str, str]) -> list[str]:
    """The names a label may take without ``add``: the vocabulary's (conf ``labels.vocabulary``),
    then those already in the lake's cell and exposure labels, each once whatever its case."""
    used = list(lake.read("labels", columns=["label"]).column("label").drop_null().to_pylist())
    used += lake.read("exposure_labels", columns=["label"]).column("label").drop_null().to_pylist()
    names: dict[str, str] = {}
    for name in [*vocabulary, *sorted(set(used))]:
        names.setdefault(name.casefold(), name)
    return list(names.values())


def vocabulary_label(label: str, known: list[str], add: bool = False) -> str:
    """``label`` spelt as the known label it names, matched whatever its case ("streak" is Streak).

    A name that is none of ``known`` is refused unless ``add``: a new class is a decision, not a
    typo.  The rule of :func:`valid_label` applies to every name.
    """
    label = valid_label(label)
    match = {name.casefold(): name for name in known}.get(label.casefold())
    if match is not None:
        return match
    if not add:
        raise UserError(
            f"{label!r} is not a known label ({', '.join(known)}); to make it a new label, "
            "give --add (console: tick 'a new label')"
        )
    return label


def label_cell(
    lake: Lake, desom2_version: str, cell: tuple[int, int], label: str | None, map_shape: tuple[int, int]
) -> dict:
    """Record ``label`` (None: remove the label) for cell (x, y) of a DESOM-2 version."""
    return label_cells(lake, desom2_version, [cell], label, map_shape)[0]


def label_cells(
    lake: Lake,
    desom2_version: str,
    cells: list[tuple[int, int]],
    label: str | None,
    map_shape: tuple[int, int],
    undoes=None,
) -> list[dict]:
    """Record ``label`` (None: remove it) for several cells of a DESOM-2 version at once (one file).

    ``undoes``: the time of the change this entry reverts (see :func:`undo_label`).
    """
    rows, cols = map_shape
    for x, y in cells:
        if not (0 <= x < cols and 0 <= y < rows):
            raise UserError(f"cell {x},{y} is outside the {rows}x{cols} map of desom2 v{desom2_version}")
    if label is not None:
        label = valid_label(label)
    now, who = datetime.now(UTC), author()
    labelled = [
        {
            "desom2_version": str(desom2_version),
            "cell_x": x,
            "cell_y": y,
            "label": label,
            "author": who,
            "labelled_at": now,
            "undoes": undoes,
        }
        for x, y in cells
    ]
    labellog.append(lake, "labels", labelled)
    return labelled


def undo_step(history: pd.DataFrame) -> tuple[str | None, object] | None:
    """What undoing a label log's last change writes: (the label before that change, the change's
    time), or None when nothing is left to undo.

    Undo steps back through the history: an undo entry names the change it reverts, and that
    change is then out of the history, so the next undo reverts the change before it (A, B, C:
    undo gives B, again A, again no label) instead of undoing the undo.
    """
    live = []
    for row in history.itertuples():
        if pd.isna(row.undoes):
            live.append(row)
        else:
            live = [r for r in live if r.labelled_at != row.undoes]
    if not live:
        return None
    before = live[-2].label if len(live) > 1 else None
    return (before if isinstance(before, str) else None), live[-1].labelled_at


def undo_label(lake: Lake, desom2_version: str, cell: tuple[int, int], map_shape: tuple[int, int]) -> dict:
    """Revert a cell's last change not yet undone (appended, like any label; see :func:`undo_step`)."""
    step = undo_step(label_history(lake, desom2_version, cell))
    if step is None:
        raise UserError(f"cell {cell[0]},{cell[1]} of desom2 v{desom2_version} has no label change to undo")
    before, undone = step
    return label_cells(lake, desom2_version, [cell], before, map_shape, undoes=undone)[0]


def label_exposure(
    lake: Lake, night: str, exposure_id: str, label: str | None, desom2_version: str, undoes=None
) -> dict:
    """Record an expert's ``label`` (None: remove it) for one exposure; it overrides its cell's label.

    ``desom2_version``: the map the expert was looking at (kept for the record); ``undoes``: the
    time of the change this entry reverts (see :func:`undo_exposure_label`).
    """
    known = lake.read(
        "exposures",
        nights=[night],
        columns=["exposure_id"],
        where=ds.field("exposure_id") == str(exposure_id),
    )
    if known.num_rows == 0:
        raise UserError(f"exposure {exposure_id} of night {night} is not in {lake.root}")
    if label is not None:
        label = valid_label(label)
    row = {
        "night": str(night),
        "exposure_id": str(exposure_id),
        "label": label,
        "source": "exposure",
        "desom2_version": str(desom2_version),
        "cell_x": None,
        "cell_y": None,
        "author": author(),
        "labelled_at": datetime.now(UTC),
        "undoes": undoes,
    }
    labellog.append(lake, "exposure_labels", [row])
    return row


def exposure_label_history(lake: Lake, night: str, exposure_id: str) -> pd.DataFrame:
    """The expert labels of one exposure, oldest first (inherited records left out)."""
    log = lake.read("exposure_labels").to_pandas()
    mine = log[
        (log["night"] == str(night))
        & (log["exposure_id"] == str(exposure_id))
        & (log["source"] == "exposure")
    ]
    return mine.sort_values("labelled_at", kind="stable").reset_index(drop=True)


def undo_exposure_label(lake: Lake, night: str, exposure_id: str, desom2_version: str) -> dict:
    """Revert an exposure's last label change not yet undone (appended; see :func:`undo_step`)."""
    step = undo_step(exposure_label_history(lake, night, exposure_id))
    if step is None:
        raise UserError(f"exposure {exposure_id} of night {night} has no label change to undo")
    before, undone = step
    return label_exposure(lake, night, exposure_id, before, desom2_version, undoes=undone)


#: what export carries of the decision: the labels as they stand, the verdict as last decided
VERDICT_COLUMNS = ["label", "label_source", "decision", "p_bad", "reason", *TEFF_COLUMNS]


def export(lake: Lake, out: str, fmt: str) -> int:
    """Write every assignment (exposure -> cell -> label) as CSV or Parquet; returns the row count.

    Beside the cell and its label: the exposure's header fields, its verdict (decision, p_bad,
    reason, the effective-exposure-time factors, where ``verdicts/`` has it) and its classical
    quality numbers (:data:`qa.EXPOSURE_QA_COLUMNS`); ``distance`` is the novelty distance
    (latent distance to the cell's prototype).  ``label`` is the exposure's own label where it has
    one, else its cell's (``cell_label``).
    """
    table = with_current_labels(lake, lake.read("assignments", columns=schema.ASSIGNMENT_RESULTS).to_pandas())
    header = ["path", "date_obs", "filter", "object", "exptime", "airmass"]
    exposures = lake.read(
        "exposures", columns=["night", "exposure_id", *header, *EXPOSURE_QA_COLUMNS]
    ).to_pandas()
    verdicts = lake.read("verdicts", columns=["night", "exposure_id", *VERDICT_COLUMNS[2:]]).to_pandas()
    own = own_labels(lake.read("exposure_labels").to_pandas())
    merged = pick(
        table.rename(columns={"label": "cell_label"})
        .merge(own, on=["night", "exposure_id"], how="left")
        .merge(exposures, on=["night", "exposure_id"], how="left")
        .merge(verdicts, on=["night", "exposure_id"], how="left")
        .sort_values(["night", "exposure_id"])
    )
    columns = [
        "night",
        "exposure_id",
        *header,
        "cell_x",
        "cell_y",
        "label",
        "cell_label",
        "distance",
        *VERDICT_COLUMNS[1:],
        *EXPOSURE_QA_COLUMNS,
        "desom1_version",
        "desom2_version",
    ]
    if fmt not in ("csv", "parquet"):
        raise UserError(f"format must be csv or parquet, not {fmt!r}")
    merged = merged[columns]
    folder = os.path.dirname(os.path.abspath(out)) if "://" not in out else None
    if folder:
        os.makedirs(folder, exist_ok=True)  # export --out reports/tonight.csv into a folder still to make
    if fmt == "csv":
        merged.to_csv(out, index=False)
    else:
        merged.to_parquet(out, index=False)
    return len(merged)


def similar(
    lake: Lake, desom2: RegisteredModel, exposure_id: str, k: int = 10, table: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The ``k`` exposures nearest to ``exposure_id`` in DESOM-2's latent space (itself first).

    ``table``: the :func:`latent_vectors` of the model, when already at hand (the console keeps them).
    """
    table = latent_vectors(lake, desom2) if table is None else table
    match = table.index[table["exposure_id"] == str(exposure_id)]
    if len(match) == 0:
        raise UserError(f"exposure {exposure_id} has no histo-vector in {lake.root}")
    z = np.stack(table["z"].to_numpy())
    d = np.linalg.norm(z - z[match[0]], axis=1)
    order = np.argsort(d, kind="stable")
    # the exposure itself first, whatever ties there are
    order = np.concatenate([[match[0]], order[order != match[0]]])[:k]
    found = pd.DataFrame(
        {
            "exposure_id": table["exposure_id"].to_numpy()[order],
            "night": table["night"].to_numpy()[order],
            "distance": d[order],
        }
    )
    return found.merge(_labelled_cells(lake), on=["night", "exposure_id"], how="left")


def _labelled_cells(lake: Lake) -> pd.DataFrame:
    """Every assigned exposure's cell and current label (empty before the first ``assign``)."""
    if not lake.exists("assignments"):
        return pd.DataFrame(columns=["night", "exposure_id", "cell_x", "cell_y", "label"])
    table = lake.read("assignments", columns=["night", "exposure_id", "cell_x", "cell_y", "desom2_version"])
    return with_current_labels(lake, table.to_pandas()).drop(columns="desom2_version")


def filter_node(
    lake: Lake, node: tuple[int, int], min_fraction: float, map_shape: tuple[int, int]
) -> pd.DataFrame:
    """Exposures whose share of detections on DESOM-1 node (x, y) is at least ``min_fraction``."""
    x, y = node
    rows, cols = map_shape
    if not (0 <= x < cols and 0 <= y < rows):
        raise UserError(f"node {x},{y} is outside the {rows}x{cols} DESOM-1 map")
    if not 0 <= min_fraction <= 1:
        raise UserError("--min-fraction must be between 0 and 1")
    vectors = lake.read("histovectors").to_pandas()
    if vectors.empty:
        return pd.DataFrame(columns=["night", "exposure_id", "fraction"])
    counts = np.stack(vectors["counts"].to_numpy())
    total = counts.sum(axis=1)
    fraction = counts[:, y * cols + x] / np.where(total > 0, total, 1.0)
    out = pd.DataFrame(
        {
            "night": vectors["night"],
            "exposure_id": vectors["exposure_id"],
            "desom1_version": vectors["desom1_version"],
            "fraction": fraction,
        }
    )
    return (
        out[out["fraction"] >= min_fraction].sort_values("fraction", ascending=False).reset_index(drop=True)
    )
