"""``desomspark serve``: the astronomer's console, the map in a browser where its cells are labelled.

A Flask application served by gunicorn (threads in a few worker processes).
Pages:

* ``/map`` -- the champion DESOM-2 map, cells coloured by label, count or
  novelty, each a link to its cell;
* ``/cell/X/Y`` -- the cell's members a page at a time: each one's
  focal-plane mosaic and full-resolution window, its quality numbers; the
  cell's label, a form to label it, its history and *undo*;
* ``/exposure/NIGHT/ID`` -- one exposure: its images, its histo-vector as a
  density map on DESOM-1, its most similar exposures (:func:`explore.similar`);
* ``/nights`` -- per-night counts, labels, drift (flagged nights), alerts;
  refreshed while ``watch`` writes;
* ``/prototypes`` -- DESOM-1's prototype map and the node filter
  (:func:`explore.filter_node`).

Every table has a CSV download (``?format=csv``).

Scale
    :class:`LakeView` reads the lake once per change and keeps what pages
    need: the members sorted by cell (a cell's page is a slice), per-cell
    aggregates, and the map page rendered per colouring.  Images are rendered
    once per exposure (or model version) and cached.  Labels are re-read when
    the ``labels/`` folder changes (checked on every request: a label shows at
    once); the rest of the lake is checked every ``refresh_seconds``.

Safety
    The console binds 127.0.0.1 by default.  Bound to any other address it
    refuses to start without a token (``$DESOMSPARK_CONSOLE_TOKEN`` or
    ``console.token`` in conf), and every POST must carry it (a cookie set by
    ``/login?token=...``, or ``Authorization: Bearer ...``).  A POST whose
    ``Origin`` (or ``Referer``) is another site is refused (403) whatever it
    carries.  The ``Host`` a request names must be one the console was started for
    (loopback without a token; with one also ``--host``, this machine's names and
    ``console.hosts``): a page whose name was rebound to the console's address (DNS
    rebinding) is refused.  Requests name cells, nights and exposure ids, which are checked
    and used as values in table filters, never as paths.  Templates escape
    every string (Jinja autoescape): a FITS header shows as text.
"""

from __future__ import annotations

import os
from functools import lru_cache

from flask import Flask

from desomspark.errors import UserError
from desomspark.lake.layout import Lake
from desomspark.serve.console.api import api
from desomspark.serve.console.guard import answered_names, guard, loopback
from desomspark.serve.console.routes import EXTENSION, bp
from desomspark.serve.console.view import LakeView, exposure_image

TOKEN_ENV = "DESOMSPARK_CONSOLE_TOKEN"


def create_app(lake: Lake, cfg, token: str | None = None, host: str | None = None) -> Flask:
    """The console as a Flask application over ``lake`` (``token``: required on every POST when set;
    ``host``: the address it is bound to)."""
    app = Flask(__name__)  # templates/ beside this module
    view = LakeView(lake, cfg, cfg.console.refresh_seconds)
    view.map()  # read before the first request: a worker starts serving with its map in memory
    images = lru_cache(maxsize=4096)(
        lambda night, exposure, kind, version, shape: exposure_image(
            lake, night, exposure, kind, version, shape
        )
    )
    app.extensions[EXTENSION] = {
        "view": view,
        "token": token,
        "images": images,
        "hosts": answered_names(host or cfg.console.host, cfg.console.hosts),
    }
    app.before_request(guard)
    app.register_blueprint(bp)
    app.register_blueprint(api)
    return app


def serve(lake: Lake, cfg, host: str | None = None, port: int | None = None) -> None:
    """Run the console under gunicorn until stopped."""
    from gunicorn.app.base import BaseApplication

    c = cfg.console
    host, port = host or c.host, c.port if port is None else port
    token = os.environ.get(TOKEN_ENV) or c.token
    if not loopback(host) and not token:
        raise UserError(
            f"the console bound to {host} lets anyone there label cells: set ${TOKEN_ENV} "
            f"(or console.token in conf), or bind 127.0.0.1"
        )
    if not lake.exists("assignments"):
        raise UserError(f"the lake {lake.root} has no assignments yet: run nightly (or assign) first")

    class Console(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": f"{host}:{port}",
                "workers": c.workers,
                "threads": c.threads,
                "worker_class": "gthread",
                "timeout": 120,
                "accesslog": None,
                # gunicornc's socket lives at one path per user: two consoles would share it
                "control_socket_disable": True,
                "errorlog": "-",
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(lake, cfg, token, host)

    print(f"console: http://{host}:{port}/map  (lake {lake.root}; Ctrl-C stops)", flush=True)
    Console().run()
