"""accept / review / retake for each exposure, with ``p_bad`` and a reason a person can read.

The order in which evidence decides, strongest first:

1. the exposure's own expert label (``label_source == "exposure"``): the expert looked at it;
2. a hard rule of the conf (``decide.rules``, per camera in its profile's ``limits``), e.g.
   ``max_fwhm: 1.5`` or ``min_teff: 0.3``: a number beyond the survey's limit is a retake;
3. its cell's label, or one it inherited from an earlier map -- unless the exposure is novel
   (farther from its cell's prototype than the map's usual reach): then it is looked at again;
4. the kernel vote of the labelled exposures near it (:mod:`desomspark.decide.vote`): ``retake``
   above ``retake_above``, ``accept`` below ``accept_below`` -- both only with ``min_evidence``
   labelled ground under them -- and ``review`` in between.

A labelled exposure's ``p_bad`` is its label's, softened by ``label_noise`` (how often an expert's
label is wrong); a label of ``review_labels`` ("look again") always gives ``review``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from desomspark.config import DecideConfig

DECISIONS = ("accept", "review", "retake")


@dataclass(frozen=True)
class DecideSettings(DecideConfig):
    """The conf's ``decide`` section, and which labels mean good (conf ``watch.good_labels``)."""

    good_labels: tuple[str, ...] = ("Good",)


def rule_firing(row, rules: dict) -> str | None:
    """The first rule ``row`` breaks, as text (``max_fwhm: fwhm 1.62 > 1.5``), or None."""
    for name, limit in rules.items():
        if limit is None:
            continue
        kind, column = name.split("_", 1)
        value = row.get(column)
        if value is None or not np.isfinite(value):
            continue
        if (kind == "max" and value > limit) or (kind == "min" and value < limit):
            return f"rule {name}: {column} {value:.3g} {'>' if kind == 'max' else '<'} {limit:g}"
    return None


def label_p_bad(label: str, s: DecideSettings) -> float | None:
    """A label's p_bad (None for a "look again" label)."""
    if label in s.review_labels:
        return None
    return s.label_noise if label in s.good_labels else 1 - s.label_noise


def by_vote(p: float, evidence: float, prior: float, s: DecideSettings) -> tuple[str, str]:
    if evidence < s.min_evidence:
        text = f"few labelled exposures like it (evidence {evidence:.2f}): p_bad {p:.2f}, prior {prior:.2f}"
        return "review", text
    text = f"model: p_bad {p:.2f} from labelled neighbours (evidence {evidence:.1f})"
    if p >= s.retake_above:
        return "retake", text
    if p <= s.accept_below:
        return "accept", text
    return "review", text


def decide_one(row, prior: float, s: DecideSettings) -> tuple[str, float, str, str]:
    """``(decision, p_bad, reason, basis)`` of one exposure (a mapping; see :func:`decide`);
    ``basis`` is what decided: ``label``, ``rule`` or ``vote``."""
    label, source = row["label"], row["label_source"]
    if source == "exposure":
        p = label_p_bad(label, s)
        if p is None:
            return "review", row["p_vote"], f"labelled {label} (look again) by an expert", "label"
        return ("accept" if p < 0.5 else "retake"), p, f"labelled {label} by an expert", "label"
    fired = rule_firing(row, row.get("rules") or s.rules)
    if fired:
        return "retake", max(row["p_vote"], 1 - s.label_noise), fired, "rule"
    if label is not None:
        p = label_p_bad(label, s)
        where = (
            f"cell {row['cell_x']},{row['cell_y']} labelled {label}{row.get('agreement_text', '')}"
            if source == "cell"
            else f"inherited {label} from {row.get('inherited_from', 'an earlier map')}"
        )
        if p is None:
            return "review", row["p_vote"], f"{where} (look again)", "label"
        if row["novel"]:
            return "review", row["p_vote"], f"{where}, but novel: {row['novelty_text']}", "label"
        return ("accept" if p < 0.5 else "retake"), p, where, "label"
    decision, text = by_vote(row["p_vote"], row["evidence"], prior, s)
    if row["novel"] and decision == "accept":
        decision, text = "review", f"{text}; novel: {row['novelty_text']}"
    return decision, row["p_vote"], text, "vote"


def decide(frame: pd.DataFrame, prior: float, s: DecideSettings) -> pd.DataFrame:
    """``decision``, ``p_bad``, ``reason`` and ``basis`` for every row of ``frame``.

    ``frame`` holds per exposure: ``label``, ``label_source``, ``cell_x``, ``cell_y``, ``p_vote``
    and ``evidence`` (:func:`vote.kernel_vote`), ``novel`` and ``novelty_text``, the columns the rules
    name, and optionally ``rules`` (the camera's), ``agreement_text``, ``inherited_from`` and
    ``ccd_text`` (CCDs that stand out, appended to the reason).
    """
    out = [decide_one(row, prior, s) for row in frame.to_dict("records")]
    decided = pd.DataFrame(out, columns=["decision", "p_bad", "reason", "basis"], index=frame.index)
    if "ccd_text" in frame:
        extra = frame["ccd_text"].fillna("")
        decided["reason"] = decided["reason"] + np.where(extra != "", "; " + extra, "")
    return decided
