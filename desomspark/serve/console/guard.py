"""Who may change the lake through the console: one check before every request, in one place.

Bound to loopback the console needs no token; bound elsewhere it refuses to
start without one (:func:`app.serve`).  With a token every POST must carry it
(cookie from ``/login?token=...`` or ``Authorization: Bearer``), and a POST
whose ``Origin`` or ``Referer`` names another site is refused whatever it carries.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlparse

from flask import abort, current_app, request

from desomspark.serve.console.routes import EXTENSION, TOKEN_COOKIE


def loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.scheme, parsed.netloc


def supplied_token() -> str:
    """The token a request carries: its bearer header, else its login cookie."""
    bearer = request.headers.get("Authorization", "")
    if bearer.startswith("Bearer "):
        return bearer.removeprefix("Bearer ")
    return request.cookies.get(TOKEN_COOKIE, "")


def guard() -> None:
    """``before_request``: refuse a cross-site POST, and a POST without the token when there is one.

    Without a token (bound to loopback) a request must also *name* loopback in its ``Host``: a page
    of another site whose name was rebound to 127.0.0.1 (DNS rebinding) sends its own name there,
    and its Origin would match it.
    """
    token = current_app.extensions[EXTENSION]["token"]
    if not token and not loopback(urlparse(f"//{request.host}").hostname or ""):
        abort(403, f"this console answers to its loopback address, not to {request.host!r}")
    if request.method != "POST":
        return None
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin and _origin(origin) != _origin(request.host_url):
        abort(403, "a POST from another site is refused")
    if token and request.endpoint != "console.login":
        if not hmac.compare_digest(supplied_token().encode(), token.encode()):
            abort(403, "labelling needs the console's token: open /login?token=... first")
    return None
