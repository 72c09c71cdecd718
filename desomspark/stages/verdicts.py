"""The verdict stage: every assigned exposure's decision, written to ``verdicts/``.

Reads ``assignments`` (the champion DESOM-2's), the label logs (``labels``, ``exposure_labels``),
the exposures' and CCDs' quality numbers and the histo-vectors (for the latent vectors the vote
reads); writes ``verdicts/night=N`` (or a live night's micro-batch).  No Spark: one night's
verdicts are a few thousand rows of pandas, so ``assign``, ``nightly``, ``watch`` and the
``verdicts`` command all call :func:`decide_nights` after their own work.

The vote behind ``p_bad`` (its labels, width and settings) is recorded once per state of the
labels as an MLflow run beside DESOM-2 (tag ``verdict_model``), and in the lake under
``_verdict_models/<digest>.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from desomspark import registry
from desomspark.config import Config
from desomspark.decide import labels as labelling
from desomspark.decide.teff import TEFF_COLUMNS, per_filter, teff_factors
from desomspark.decide.verdict import DecideSettings, decide
from desomspark.decide.vote import Vote, fit_vote, typical_spacing
from desomspark.errors import UserError
from desomspark.ingest.camera import load_profiles
from desomspark.ingest.qa import EXPOSURE_QA_COLUMNS
from desomspark.lake import schema
from desomspark.lake.layout import Batch, Lake
from desomspark.lake.queries import current_labels, latent_vectors
from desomspark.registry import RegisteredModel, tracking

_LOG = logging.getLogger(__name__)

KEY = labelling.KEY
MODELS_DIR = "_verdict_models"


def settings_of(cfg: Config) -> DecideSettings:
    """The conf's ``decide`` section with the labels that mean good (``watch.good_labels``)."""
    return DecideSettings(**dataclasses.asdict(cfg.decide), good_labels=tuple(cfg.watch.good_labels))


# --- what the decision reads ---------------------------------------------------------------------
def resolved_members(lake: Lake, desom2: RegisteredModel) -> pd.DataFrame:
    """Every exposure the map assigned, with its label resolved (:func:`labels.resolve`)."""
    assigned = lake.read(
        "assignments", columns=[*KEY, "desom1_version", "desom2_version", "cell_x", "cell_y", "distance"]
    ).to_pandas()
    assigned = assigned[assigned["desom2_version"] == str(desom2.version)]
    cells = current_labels(lake, desom2.version)
    cell_labels = {
        (int(r.cell_x), int(r.cell_y)): r.label for r in cells.itertuples() if isinstance(r.label, str)
    }
    own = labelling.own_labels(lake.read("exposure_labels").to_pandas())
    return labelling.resolve(assigned.reset_index(drop=True), cell_labels, own)


def exposure_numbers(lake: Lake, nights: list[str]) -> pd.DataFrame:
    """The exposures' quality numbers and effective-exposure-time factors (nominals from the camera)."""
    columns = [*KEY, "camera", "filter", "exptime", "zero_point", *EXPOSURE_QA_COLUMNS]
    e = lake.read("exposures", nights=nights, columns=columns).to_pandas()
    profiles = load_profiles()
    nominal = {"fwhm": [], "sky": [], "zp": []}
    for camera, f in zip(e["camera"], e["filter"]):
        p = profiles.get(str(camera)) or profiles["generic"]
        nominal["fwhm"].append(np.nan if p.fwhm_nominal is None else p.fwhm_nominal)
        nominal["sky"].append(per_filter(p.sky_nominal, pd.Series([f]))[0])
        nominal["zp"].append(per_filter(p.zero_point_nominal, pd.Series([f]))[0])
    factors = teff_factors(
        e["fwhm"], e["sky"], e["exptime"], e["zero_point"], nominal["fwhm"], nominal["sky"], nominal["zp"]
    )
    e["rules"] = [{**(profiles.get(str(c)) or profiles["generic"]).limits} or None for c in e["camera"]]
    return pd.concat([e.reset_index(drop=True), factors], axis=1)


def ccd_notes(lake: Lake, nights: list[str], numbers: pd.DataFrame, outlier: float) -> dict:
    """Per exposure, the CCDs that stand out (dead, or seeing / sky factor below ``outlier`` x the
    exposure's median), as text for the reason."""
    ccds = lake.read(
        "ccds", nights=nights, columns=[*KEY, "extname", "hdu_index", "dead", "fwhm_px", "background"]
    ).to_pandas()
    notes = {}
    for key, group in ccds.groupby(KEY):
        named = []
        fwhm, sky = group["fwhm_px"].astype(float), group["background"].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            seeing = (np.nanmedian(fwhm) / fwhm) ** 2 if fwhm.notna().any() else fwhm * np.nan
            skyf = np.nanmedian(sky) / sky if sky.notna().any() else sky * np.nan
        for r, s, k in zip(group.itertuples(), seeing, skyf):
            name = r.extname or f"hdu{r.hdu_index}"
            if r.dead:
                named.append(f"{name} dead")
            elif np.isfinite(s) and s < outlier:
                named.append(f"{name} seeing factor {s:.2f} of the median")
            elif np.isfinite(k) and k < outlier:
                named.append(f"{name} sky factor {k:.2f} of the median")
        if named:
            shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
            notes[key] = f"CCDs standing out: {shown}"
    return notes


def novelty_cutoff(distances: pd.Series, cfg: Config, margin: float) -> float:
    """Distances beyond this are novel: ``margin`` times the ``watch.novelty_quantile`` of ``distances``
    (the map's exposures); the verdicts' margin is ``decide.novelty_margin``, the alert rule's
    ``watch.novelty_margin``."""
    w = cfg.watch
    if len(distances) < w.novelty_min_reference:
        return float("inf")
    return float(np.quantile(distances, w.novelty_quantile) * margin)


# --- the vote ----------------------------------------------------------------------------------
def labelled_rows(members: pd.DataFrame, s: DecideSettings) -> pd.DataFrame:
    """The exposures the vote learns from (a label that is not "look again"), with ``bad`` and ``group``."""
    known = members[members["label"].notna() & ~members["label"].isin(s.review_labels)].copy()
    known["bad"] = (~known["label"].isin(s.good_labels)).astype(float)
    cell = known["cell_x"].astype(str) + "," + known["cell_y"].astype(str)
    known["group"] = np.select(
        [known["label_source"] == "cell", known["label_source"] == "inherited"],
        # own_from as text whatever pandas made of it (all-null logs read back as float NaN)
        ["cell " + cell, "from " + known["own_from"].astype(object).fillna("").astype(str)],
        "exposure " + known["night"] + "/" + known["exposure_id"],
    )
    return known


def with_z(frame: pd.DataFrame, z: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """``frame``'s rows that have a latent vector, and those vectors."""
    merged = frame.merge(z, on=KEY, how="inner")
    return merged, np.stack(merged["z"].to_numpy()) if len(merged) else np.zeros((0, 1))


def fit_labels(members: pd.DataFrame, z: pd.DataFrame, cfg: Config) -> Vote:
    """The vote of the labelled members (the cross-validated kernel width)."""
    s = settings_of(cfg)
    known, zl = with_z(labelled_rows(members, s), z)
    spacing = typical_spacing(zl if len(zl) >= 10 else np.stack(z["z"].to_numpy()))
    return fit_vote(zl, known["bad"].to_numpy(), known["group"].to_numpy(), spacing, s)


def record_vote(lake: Lake, cfg: Config, vote: Vote, desom2: RegisteredModel) -> None:
    """Record a new vote in MLflow (once per digest) and in the lake; MLflow down is a warning only."""
    marker = posixpath.join(MODELS_DIR, f"{vote.digest}.json")
    if lake.exists(marker):
        return
    summary = {
        "digest": vote.digest,
        "desom2_version": str(desom2.version),
        "desom1_version": str(desom2.desom1_version),
        "n_labelled": int(len(vote.bad)),
        "n_bad": int(vote.bad.sum()),
        "prior": float(vote.prior),
        "bandwidth": float(vote.bandwidth),
        **{f"cv_{k}": float(v) for k, v in vote.cv.items()},
    }
    try:
        import mlflow

        with tracking.run(lake, cfg.mlflow, f"verdicts-{vote.digest}") as run:
            mlflow.set_tags({"verdict_model": vote.digest, "desom2_version": str(desom2.version)})
            mlflow.log_params({k: v for k, v in summary.items() if k in ("prior", "bandwidth")})
            mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            summary["mlflow_run_id"] = run.info.run_id
    except Exception as exc:  # the verdicts stand without the record; the next run records it
        _LOG.warning(f"verdicts: the vote {vote.digest} was not recorded in MLflow ({exc}); will retry")
        return
    lake.write_json(summary, marker)


# --- the stage -----------------------------------------------------------------------------------
def verdict_table(
    lake: Lake, cfg: Config, desom2: RegisteredModel, nights: list[str], batch: Batch | None = None
) -> tuple[pd.DataFrame, Vote | None]:
    """The verdicts of ``nights`` (or of a micro-batch's exposures) under the map ``desom2``."""
    members = resolved_members(lake, desom2)
    targets = members[members["night"].isin(nights)]
    if batch is not None:
        targets = batch.keep(targets)
    if targets.empty:
        return pd.DataFrame(columns=schema.VERDICTS.names), None
    s = settings_of(cfg)
    known = labelled_rows(members, s)
    ids = sorted(set(targets["exposure_id"]) | set(known["exposure_id"]))
    z = latent_vectors(lake, desom2, ids)
    vote = fit_labels(members, z, cfg)
    rows, zt = with_z(targets, z)
    rows["p_vote"], rows["evidence"] = vote.predict(zt) if len(zt) else (np.zeros(0), np.zeros(0))
    cutoff = novelty_cutoff(members["distance"], cfg, cfg.decide.novelty_margin)
    rows["novel"] = rows["distance"] > cutoff
    rows["novelty_text"] = [f"distance {d:.3g} > {cutoff:.3g}" for d in rows["distance"]]
    rows["agreement_text"] = agreement_texts(members, rows)
    rows["inherited_from"] = rows["own_from"]
    numbers = exposure_numbers(lake, nights)
    rows = rows.merge(numbers, on=KEY, how="left")
    notes = ccd_notes(lake, nights, numbers, cfg.decide.ccd_outlier)
    rows["ccd_text"] = [notes.get(k) for k in zip(rows["night"], rows["exposure_id"])]
    rows = pd.concat([rows, decide(rows, vote.prior, s)], axis=1)
    rows["verdict_model"] = vote.digest
    rows["decided_at"] = datetime.now(UTC)
    return rows[schema.VERDICTS.names].sort_values(KEY).reset_index(drop=True), vote


def agreement_texts(members: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """For a labelled cell: how many of its members' own labels agree with the cell's label."""
    texts = {}
    for (x, y), cell in members[members["cell_label"].notna()].groupby(["cell_x", "cell_y"]):
        own = cell["own_label"].dropna()
        if len(own):
            agree = int((own == cell["cell_label"].iloc[0]).sum())
            texts[(int(x), int(y))] = f" ({agree} of {len(own)} members' own labels agree)"
    return [texts.get((int(x), int(y)), "") for x, y in zip(rows["cell_x"], rows["cell_y"])]


def commit_verdicts(
    lake: Lake, staging: str, table: pd.DataFrame, nights: list[str], batch: Batch | None
) -> None:
    """Stage the verdicts per night and commit them (the night's partition, or the batch's files)."""
    lake.stage_arrow(staging, "verdicts", pa.Table.from_pandas(table, preserve_index=False))
    if batch is None:
        lake.commit_nights(staging, ["verdicts"], nights)
    else:
        lake.commit_batch(staging, ["verdicts"], batch.id)


def decide_nights(
    lake: Lake,
    cfg: Config,
    nights: list[str] | None = None,
    batch: Batch | None = None,
    desom2: RegisteredModel | None = None,
) -> pd.DataFrame:
    """Decide every exposure of ``nights`` (default: every assigned night) and commit ``verdicts/``.

    ``desom2``: the map whose assignments are decided (default: the champion).  Returns the rows.
    """
    desom2 = desom2 or registry.registered(lake, cfg, "desom2")
    nights = nights or lake.nights("assignments")
    if not nights:
        raise UserError(f"the lake {lake.root} has no assignments: run assign first")
    staging = lake.new_staging(replaces=["verdicts"] if batch is None else None)
    table, vote = verdict_table(lake, cfg, desom2, nights, batch)
    if vote is None:
        _LOG.warning(
            f"verdicts: no exposure of night(s) {', '.join(nights)} is assigned by desom2 v{desom2.version}"
            f" (run: desomspark assign --lake {lake.root} --night {nights[0]})"
        )
        return table
    commit_verdicts(lake, staging, table, nights, batch)
    record_vote(lake, cfg, vote, desom2)
    counts = table["decision"].value_counts()
    _LOG.info(
        f"verdicts: {len(table)} exposures: "
        + ", ".join(f"{counts.get(d, 0)} {d}" for d in ("accept", "review", "retake"))
        + f" (vote {vote.digest}: {len(vote.bad)} labelled exposures)"
    )
    return table


def write_feed(table: pd.DataFrame, out: str, fmt: str) -> int:
    """The scheduler's feed: one line per exposure (exposure, decision, probability, reason, numbers)."""
    if fmt not in ("csv", "json"):
        raise UserError(f"format must be csv or json, not {fmt!r}")
    columns = [
        *KEY,
        "decision",
        "p_bad",
        "basis",
        "reason",
        "label",
        "label_source",
        "evidence",
        *TEFF_COLUMNS,
        "cell_x",
        "cell_y",
        "desom1_version",
        "desom2_version",
        "verdict_model",
        "decided_at",
    ]
    feed = table[columns].copy()
    feed["decided_at"] = pd.to_datetime(feed["decided_at"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if fmt == "csv":
        feed.to_csv(out, index=False)
    else:
        feed.to_json(out, orient="records", indent=1)
    return len(feed)
