"""Read-side queries of the lake shared by the report, evaluate, export and the explorers.

* :func:`map_members` -- the exposures a DESOM-2 version assigned, with their headers and numbers;
* :func:`current_labels`, :func:`with_current_labels` -- the labels as they stand now;
* :func:`exposure_views` -- each exposure's focal-plane mosaic and full-resolution window;
* :func:`night_summaries` -- one line per night: files used and rejected, CCDs, cutouts, labels;
* :func:`desom2_inputs`, :func:`input_matrix` -- the histo-vectors (and quality numbers) as
  DESOM-2 reads them, for training, assigning and searching alike.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from desomspark.errors import UserError
from desomspark.ingest.qa import EXPOSURE_QA_COLUMNS, decode_stack
from desomspark.lake import schema
from desomspark.lake.layout import Lake


def latent_vectors(lake: Lake, desom2, exposure_ids: list[str] | None = None) -> pd.DataFrame:
    """Every exposure's DESOM-2 latent vector ``z`` (from its histo-vector made by the model's DESOM-1,
    and its quality numbers where the model reads them); ``exposure_ids``: only those.

    ``assign`` stores each exposure's ``z`` with its cell: those are read as they are.  Only the
    exposures the map did not assign (or assigned before the column existed) are mapped here,
    so that ``similar`` and ``verdicts`` on an assigned lake load no model.
    """
    vectors, _ = desom2_inputs(lake, desom2.desom1_version, desom2.qa_inputs, exposure_ids)
    stored = stored_latents(lake, str(desom2.version), exposure_ids)
    keyed = vectors[["night", "exposure_id"]].merge(stored, on=["night", "exposure_id"], how="left")
    z = list(keyed["z"])
    missing = [k for k, v in enumerate(z) if not isinstance(v, np.ndarray)]
    if missing:
        for k, v in zip(missing, mapped_latents(desom2, vectors.iloc[missing])):
            z[k] = v
    return keyed.assign(z=z)


def stored_latents(lake: Lake, desom2_version: str, exposure_ids: list[str] | None) -> pd.DataFrame:
    """(night, exposure_id, z) of the exposures ``assign`` mapped with this DESOM-2 version."""
    where = ds.field("desom2_version") == desom2_version
    if exposure_ids is not None:
        where &= ds.field("exposure_id").isin(list(exposure_ids))
    rows = lake.read("assignments", columns=["night", "exposure_id", "latent"], where=where).to_pandas()
    rows = rows[rows["latent"].notna()]
    return pd.DataFrame(
        {
            "night": rows["night"].to_numpy(),
            "exposure_id": rows["exposure_id"].to_numpy(),
            "z": [np.asarray(v, dtype=np.float32) for v in rows["latent"]],
        }
    )


def mapped_latents(desom2, vectors: pd.DataFrame) -> np.ndarray:
    """DESOM-2's latent vectors of ``vectors`` (histo-vectors and quality inputs), through the model."""
    from desomspark import registry
    from desomspark.desom.mapping import map_inputs

    mapper = registry.cached_model(desom2.uri, "cpu")
    return map_inputs(mapper, input_matrix(vectors["counts"], vectors, desom2.qa_inputs))[2].astype(
        np.float32
    )


def label_history(lake: Lake, desom2_version: str, cell: tuple[int, int] | None = None) -> pd.DataFrame:
    """The label log of a DESOM-2 version (or of one of its cells), oldest entry first."""
    labels = lake.read("labels").to_pandas()
    keep = labels["desom2_version"] == str(desom2_version)
    if cell is not None:
        keep &= (labels["cell_x"] == cell[0]) & (labels["cell_y"] == cell[1])
    return labels[keep].sort_values("labelled_at", kind="stable").reset_index(drop=True)


def current_labels(lake: Lake, desom2_version: str) -> pd.DataFrame:
    """The label of each cell of a DESOM-2 version: the latest entry per cell (null = unlabelled)."""
    labels = label_history(lake, desom2_version)
    if labels.empty:
        return pd.DataFrame(columns=["cell_x", "cell_y", "label"])
    # not groupby().last(): it skips nulls, and an unlabel (null) must win too
    latest = labels.drop_duplicates(["cell_x", "cell_y"], keep="last")
    return latest[["cell_x", "cell_y", "label"]]


def with_current_labels(lake: Lake, assignments: pd.DataFrame) -> pd.DataFrame:
    """``assignments`` with each row's ``label`` taken from ``labels/`` now, for its own DESOM-2 version.

    A label takes effect when results are read (export, report, similar), not
    only when ``assign`` next writes the table: an astronomer sees it at once.
    """
    out = assignments.drop(columns=["label"], errors="ignore")
    if out.empty:
        return out.assign(label=pd.Series(dtype=object))
    parts = []
    for version, rows in out.groupby("desom2_version", sort=False):
        labels = current_labels(lake, str(version)).astype({"cell_x": "int64", "cell_y": "int64"})
        rows = rows.astype({"cell_x": "int64", "cell_y": "int64"})
        parts.append(rows.merge(labels, on=["cell_x", "cell_y"], how="left").set_index(rows.index))
    return pd.concat(parts).loc[out.index]


def map_members(lake: Lake, desom2_version: str) -> pd.DataFrame:
    """Every exposure assigned by one DESOM-2 version, with its header fields and quality numbers."""
    assigned = lake.read("assignments", columns=schema.ASSIGNMENT_RESULTS).to_pandas()
    assigned = assigned[assigned["desom2_version"] == str(desom2_version)]
    exposures = lake.read(
        "exposures",
        columns=[
            "night",
            "exposure_id",
            "path",
            "object",
            "filter",
            "exptime",
            "airmass",
            "date_obs",
            "truth_label",
            *EXPOSURE_QA_COLUMNS,
        ],
    ).to_pandas()
    return assigned.merge(exposures, on=["night", "exposure_id"], how="left")


def night_summaries(lake: Lake) -> pd.DataFrame:
    """Per night: exposures ok / partial, rejected files (counted and named with their reason),
    CCDs, cutouts, assigned exposures."""
    exposures = lake.read("exposures", columns=["night", "status", "n_ccds_used", "n_cutouts"]).to_pandas()
    rejects = lake.read("rejects", columns=["night", "path", "hdu_index", "reason"]).to_pandas()
    files = rejects[rejects["hdu_index"].isna()]
    assigned = with_current_labels(
        lake,
        lake.read(
            "assignments", columns=["night", "exposure_id", "cell_x", "cell_y", "desom2_version"]
        ).to_pandas(),
    )
    verdicts = lake.read("verdicts", columns=["night", "decision", "teff"]).to_pandas()
    nights = sorted(set(exposures["night"]) | set(rejects["night"]))
    rows = []
    for night in nights:
        e = exposures[exposures["night"] == night]
        a = assigned[assigned["night"] == night]
        labels = a["label"].fillna("(unlabelled)").value_counts()
        rows.append(
            {
                "night": night,
                "ok": int((e["status"] == "ok").sum()),
                "partial": int((e["status"] == "partial").sum()),
                "rejected_files": int((files["night"] == night).sum()),
                "rejected": "; ".join(
                    f"{os.path.basename(str(r.path))} ({r.reason})"
                    for r in files[files["night"] == night].itertuples()
                ),
                "ccds": int(e["n_ccds_used"].sum()),
                "cutouts": int(e["n_cutouts"].sum()),
                "assigned": int(a["exposure_id"].nunique()),
                "labels": ", ".join(f"{k}: {v}" for k, v in labels.items()),
                **verdict_summary(verdicts[verdicts["night"] == night]),
            }
        )
    return pd.DataFrame(rows)


def verdict_summary(verdicts: pd.DataFrame) -> dict:
    """A night's decisions counted (``accept``, ``review``, ``retake``) and its median ``teff``."""
    counts = verdicts["decision"].value_counts()
    out = {d: int(counts.get(d, 0)) for d in ("accept", "review", "retake")}
    out["median_teff"] = float(verdicts["teff"].median()) if len(verdicts) else float("nan")
    return out


def _image(data, height: int, width: int) -> np.ndarray | None:
    if data is None or not height or not width:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(int(height), int(width))


def exposure_views(lake: Lake, exposure_ids: list[str], nights: list[str] | None = None) -> dict[str, dict]:
    """Per exposure: its focal-plane ``mosaic`` of CCD thumbnails, its full-resolution ``window``
    and its stacked ``star`` (the median of its CCDs' stacked stars; None without PSF stars).

    ``nights``, when known, limits the search to their partitions.
    """
    if not exposure_ids:
        return {}
    ccds = lake.read(
        "ccds",
        nights=nights,
        columns=[
            "exposure_id",
            "hdu_index",
            "ccd_row",
            "ccd_col",
            "dead",
            "thumbnail",
            "thumbnail_height",
            "thumbnail_width",
            "window",
            "window_height",
            "window_width",
            "psf_stack",
        ],
        where=ds.field("exposure_id").isin(list(exposure_ids)),
    ).to_pandas()
    views = {}
    for exposure_id, group in ccds.sort_values("hdu_index").groupby("exposure_id"):
        thumbs = [
            (int(r.ccd_row), int(r.ccd_col), img)
            for r in group.itertuples()
            if (img := _image(r.thumbnail, r.thumbnail_height, r.thumbnail_width)) is not None
        ]
        # the central CCD's window, unless it is dead (a black square): then the next one kept
        windows = [
            w
            for r in central_first(group).itertuples()
            if (w := _image(r.window, r.window_height, r.window_width)) is not None
        ]
        stacks = [stack for blob in group["psf_stack"] if (stack := decode_stack(blob)) is not None]
        views[exposure_id] = {
            "mosaic": focal_plane(thumbs),
            "window": windows[0] if windows else None,
            "star": np.median(stacks, axis=0) if stacks else None,
        }
    return views


def focal_plane(thumbnails: list[tuple[int, int, np.ndarray]], gap: int = 2) -> np.ndarray:
    """Place CCD thumbnails (ccd_row, ccd_col, uint8 image) in their focal-plane layout.

    Row 0 is drawn at the top; a CCD missing from the list (rejected) is a NaN hole.
    CCDs without a known position (row or column < 0) are laid out in one row.
    """
    if not thumbnails:
        return np.full((1, 1), np.nan, dtype=np.float32)
    if any(r < 0 or c < 0 for r, c, _ in thumbnails):
        thumbnails = [(0, k, img) for k, (_, _, img) in enumerate(thumbnails)]
    h = max(img.shape[0] for _, _, img in thumbnails)
    w = max(img.shape[1] for _, _, img in thumbnails)
    rows = max(r for r, _, _ in thumbnails) + 1
    cols = max(c for _, c, _ in thumbnails) + 1
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for r, c, img in thumbnails:
        out[r * (h + gap) : r * (h + gap) + img.shape[0], c * (w + gap) : c * (w + gap) + img.shape[1]] = img
    return out


def central_first(group: pd.DataFrame) -> pd.DataFrame:
    """An exposure's CCDs, live before dead, each nearest the focal-plane centre first."""
    placed = group[(group["ccd_row"] >= 0) & (group["ccd_col"] >= 0)]
    if placed.empty:
        distance = group["hdu_index"].astype(float)
    else:
        cy = (placed["ccd_row"].min() + placed["ccd_row"].max()) / 2
        cx = (placed["ccd_col"].min() + placed["ccd_col"].max()) / 2
        distance = (group["ccd_row"] - cy) ** 2 + (group["ccd_col"] - cx) ** 2
    order = pd.DataFrame(
        {"dead": group["dead"].fillna(False).astype(bool), "d": distance, "i": group["hdu_index"]}
    )
    return group.loc[order.sort_values(["dead", "d", "i"]).index]


def input_matrix(counts, qa: pd.DataFrame | None, qa_inputs: tuple[str, ...] | list[str]) -> np.ndarray:
    """DESOM-2's raw input rows: the counts, then the ``qa_inputs`` columns (float32, NaN kept)."""
    x = np.stack(list(counts)).astype(np.float32)
    if qa_inputs:
        x = np.concatenate([x, qa[list(qa_inputs)].to_numpy(dtype=np.float32)], axis=1)
    return x


def desom2_inputs(
    lake: Lake,
    desom1_version: str | None = None,
    qa_inputs: tuple[str, ...] = (),
    exposure_ids: list[str] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Every histo-vector of the lake made by one DESOM-1 version (default: the most recent one),
    with the exposures' ``qa_inputs`` columns (``exposure_ids``: only those exposures)."""
    where = ds.field("exposure_id").isin(list(exposure_ids)) if exposure_ids is not None else None
    table = lake.read("histovectors", where=where).to_pandas()
    if table.empty:
        raise UserError(f"the lake {lake.root} has no histo-vectors: run histovectors first")
    versions = sorted(table["desom1_version"].unique(), key=lambda v: int(v) if v.isdigit() else v)
    version = str(desom1_version or versions[-1])
    table = table[table["desom1_version"] == version].sort_values(["night", "exposure_id"])
    if table.empty:
        raise UserError(f"no histo-vectors of desom1 version {version} (have: {', '.join(versions)})")
    if qa_inputs:
        qa = lake.read("exposures", columns=["night", "exposure_id", *qa_inputs], where=where).to_pandas()
        table = table.merge(qa, on=["night", "exposure_id"], how="left")
    return table.reset_index(drop=True), version
