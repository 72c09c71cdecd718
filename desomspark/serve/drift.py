"""Drift over nights: is tonight's map unlike the nights before it, and is a CCD failing?

Per night, the distribution of its exposures over the champion map's cells
is compared with that of a reference window (the ``window`` nights before
it, pooled) by the Jensen-Shannon divergence (base 2: 0 for the same
distribution, 1 for disjoint cells).  A night above ``threshold`` is
flagged: its exposures fell where the recent past did not go (new weather,
a new fault, or a change of filter or field mix worth a look).  Beside it:
label fractions and median novelty (latent distance to the cell's
prototype).

Per CCD and night: median detections, sky and FWHM from ``ccds/`` (the
ingest's own numbers), so that a CCD that goes dark or soft shows as a
broken line.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from desomspark.lake.layout import Lake

#: added to every cell's count before comparing: a cell no reference night used is rare, not impossible
SMOOTHING = 0.5


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2) of two count vectors, each normalised to sum 1."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        return float(np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / b), 0.0)))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def night_drift(
    assigned: pd.DataFrame, n_cells: int, window: int = 7, threshold: float = 0.35
) -> pd.DataFrame:
    """One row per night of ``assigned`` (columns night, cell, distance, label), in night order.

    Columns: night, exposures, divergence from the reference window (NaN for
    the first night), reference nights used, flagged, median novelty, and
    one ``label:NAME`` fraction column per label (``(unlabelled)`` included).
    """
    nights = sorted(assigned["night"].unique())
    counts = {
        n: np.bincount(g["cell"].astype(int), minlength=n_cells).astype(float)
        for n, g in assigned.groupby("night")
    }
    labels = assigned["label"].fillna("(unlabelled)")
    fractions = pd.crosstab(assigned["night"], labels, normalize="index")
    rows = []
    for i, night in enumerate(nights):
        reference = nights[max(0, i - window) : i]
        divergence = np.nan
        if reference:
            pooled = sum(counts[n] for n in reference) + SMOOTHING
            divergence = jensen_shannon(counts[night] + SMOOTHING, pooled)
        tonight = assigned[assigned["night"] == night]
        rows.append(
            {
                "night": night,
                "exposures": len(tonight),
                "divergence": divergence,
                "reference_nights": len(reference),
                "flagged": bool(reference) and divergence > threshold,
                "median_novelty": float(tonight["distance"].median()),
                **{f"label:{k}": float(v) for k, v in fractions.loc[night].items()},
            }
        )
    return pd.DataFrame(rows)


def ccd_health(lake: Lake) -> pd.DataFrame:
    """Per night and CCD (HDU): median detections, sky, FWHM and the share of its rows rejected."""
    ccds = lake.read(
        "ccds", columns=["night", "hdu_index", "n_detected", "background", "fwhm", "reject_reason"]
    ).to_pandas()
    ccds["rejected"] = ccds["reject_reason"].notna()
    return (
        ccds.groupby(["night", "hdu_index"])
        .agg(
            detections=("n_detected", "median"),
            sky=("background", "median"),
            fwhm=("fwhm", "median"),
            rejected=("rejected", "mean"),
        )
        .reset_index()
    )
