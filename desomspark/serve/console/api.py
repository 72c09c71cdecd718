"""The console's JSON API (``/api/v1/``): what a scheduler or a script asks of the map and its verdicts.

* ``GET  /api/v1/nights`` -- nights with their exposure counts per decision;
* ``GET  /api/v1/nights/<night>/exposures`` -- a night's exposures: verdict, label, QA numbers;
* ``GET  /api/v1/exposures/<night>/<id>`` -- one exposure: header, QA numbers, verdict, label history;
* ``GET  /api/v1/cells`` -- the map's occupied cells: count, label, suggested label, label-next score;
* ``POST /api/v1/cells/<x>/<y>/label`` and ``POST /api/v1/exposures/<night>/<id>/label`` with
  ``{"label": "Good"}`` (``null`` removes it; ``"add": true`` for a name not yet known) -- the
  same labels as the pages, under the same guard (the token, when the console has one) and
  only as ``application/json`` (a plain HTML form of another site cannot send that);
* ``GET  /api/v1/openapi.json`` -- this API as an OpenAPI 3.1 document.

Verdicts are those of the labels as they stand now (:meth:`LakeView.decisions`).
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
from flask import Blueprint, abort, jsonify, request
from werkzeug.exceptions import HTTPException

from desomspark.decide.teff import TEFF_COLUMNS
from desomspark.errors import UserError
from desomspark.ingest.qa import EXPOSURE_QA_COLUMNS
from desomspark.registry.store import RegistryError
from desomspark.serve import explore
from desomspark.serve.console.routes import exposure_row, lake, the_cell, the_night, view, vocabulary

api = Blueprint("api", __name__, url_prefix="/api/v1")

VERDICT_FIELDS = ["decision", "p_bad", "basis", "reason", "label", "label_source", "evidence", *TEFF_COLUMNS]


def plain(value):
    """A JSON value: NaN and NA as null, numpy scalars as Python, timestamps as ISO text."""
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def records(frame: pd.DataFrame) -> list[dict]:
    return [{k: plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


# by code: the pages' handlers of these codes (routes.error) would win over a handler of the class
@api.errorhandler(400)
@api.errorhandler(403)
@api.errorhandler(404)
@api.errorhandler(405)
@api.errorhandler(415)
@api.errorhandler(HTTPException)
def api_error(exc):
    return jsonify(error=exc.name, message=exc.description), exc.code


@api.errorhandler(RegistryError)
def api_registry_error(exc):
    return jsonify(error="MLflow unreachable", message=str(exc)), 503


@api.errorhandler(UserError)
def api_user_error(exc):
    return jsonify(error="Bad Request", message=str(exc)), 400


@api.get("/nights")
def nights():
    v = view().decisions().verdicts
    counts = v.groupby(["night", "decision"]).size().unstack(fill_value=0) if len(v) else pd.DataFrame()
    out = [
        {
            "night": night,
            "exposures": int(row.sum()),
            **{d: int(row.get(d, 0)) for d in ("accept", "review", "retake")},
        }
        for night, row in counts.iterrows()
    ]
    return jsonify(nights=out)


@api.get("/nights/<night>/exposures")
def night_exposures(night: str):
    v = view().decisions().verdicts
    rows = v[v["night"] == the_night(night)]
    if rows.empty:
        abort(404, f"night {night} has no exposure on the map of desom2 v{view().map().d2_version}")
    qa = lake().read("exposures", nights=[night], columns=["night", "exposure_id", *EXPOSURE_QA_COLUMNS])
    rows = rows.merge(qa.to_pandas(), on=["night", "exposure_id"], how="left")
    columns = ["night", "exposure_id", "cell_x", "cell_y", *VERDICT_FIELDS, *EXPOSURE_QA_COLUMNS]
    return jsonify(night=night, desom2_version=view().map().d2_version, exposures=records(rows[columns]))


@api.get("/exposures/<night>/<exposure_id>")
def one_exposure(night: str, exposure_id: str):
    row = exposure_row(night, exposure_id)
    fields = {k: plain(v) for k, v in row.items() if not isinstance(v, (bytes, np.ndarray, list))}
    history = explore.exposure_label_history(lake(), night, exposure_id)
    return jsonify(
        exposure=fields,
        verdict={k: plain(v) for k, v in (view().decisions().of_exposure(night, exposure_id) or {}).items()},
        label_history=records(history[["label", "author", "labelled_at"]]),
    )


@api.get("/cells")
def cells():
    data, decisions = view().map(), view().decisions()
    labels = view().label_of(data.d2_version)
    table = data.cells[["cell_x", "cell_y", "count", "novelty"]].copy()
    table["label"] = [labels.get((int(x), int(y))) for x, y in zip(table["cell_x"], table["cell_y"])]
    table = table.merge(decisions.suggested[["cell_x", "cell_y", "suggested", "agreement"]], how="left")
    table = table.merge(decisions.next_cells[["cell_x", "cell_y", "score"]], how="left")
    return jsonify(desom2_version=data.d2_version, map_shape=list(data.shape), cells=records(table))


def posted_label() -> str | None:
    if not request.is_json:
        abort(415, 'send the label as JSON: {"label": "Good"} (null removes it)')
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "label" not in body:
        abort(400, 'expected a JSON object {"label": "Good"} (null removes it)')
    label, add = body["label"], body.get("add", False)
    if label is not None and not isinstance(label, str):
        abort(400, "label must be text or null")
    if not isinstance(add, bool):
        abort(400, "add must be true or false")
    if label is None:
        return None
    # matched to the label vocabulary as the pages match it; a new name needs "add": true
    return explore.vocabulary_label(label, [name for name, _ in vocabulary()], add=add)


@api.post("/cells/<int:x>/<int:y>/label")
def label_cell(x: int, y: int):
    data = view().map()
    the_cell(data, x, y)
    row = explore.label_cell(lake(), data.d2_version, (x, y), posted_label(), data.shape)
    return jsonify({k: plain(v) for k, v in row.items()})


@api.post("/exposures/<night>/<exposure_id>/label")
def label_exposure(night: str, exposure_id: str):
    row = explore.label_exposure(
        lake(), the_night(night), exposure_id, posted_label(), view().map().d2_version
    )
    return jsonify({k: plain(v) for k, v in row.items()})


@api.get("/openapi.json")
def openapi():
    return jsonify(OPENAPI)


def _get(summary: str, *params: str) -> dict:
    return {
        "get": {
            "summary": summary,
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ],
            "responses": {"200": {"description": "JSON"}, "404": {"description": "not found"}},
        }
    }


def _post(summary: str, *params: str) -> dict:
    return {
        "post": {
            "summary": summary,
            "security": [{"token": []}],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Label"}}},
            },
            "responses": {
                "200": {"description": "the label as recorded"},
                "400": {"description": "not a usable label"},
                "403": {"description": "no token, or from another site"},
                "415": {"description": "not JSON"},
            },
        }
    }


OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "desomspark console API", "version": "1"},
    "paths": {
        "/api/v1/nights": _get("nights and their decisions"),
        "/api/v1/nights/{night}/exposures": _get("a night's exposures with verdicts and QA numbers", "night"),
        "/api/v1/exposures/{night}/{exposure_id}": _get("one exposure", "night", "exposure_id"),
        "/api/v1/cells": _get("the map's occupied cells with labels, suggestions and label-next scores"),
        "/api/v1/cells/{x}/{y}/label": _post("label a cell of the champion map", "x", "y"),
        "/api/v1/exposures/{night}/{exposure_id}/label": _post("label one exposure", "night", "exposure_id"),
    },
    "components": {
        "schemas": {
            "Label": {
                "type": "object",
                "required": ["label"],
                "properties": {"label": {"type": ["string", "null"], "maxLength": explore.MAX_LABEL}},
            }
        },
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
    },
}
