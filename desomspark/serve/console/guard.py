"""Who may change the lake through the console: one check before every request, in one place.

Bound to loopback the console needs no token; bound elsewhere it refuses to
start without one (:func:`app.serve`).  With a token every POST must carry it
(cookie from ``/login?token=...`` or ``Authorization: Bearer``), and a POST
whose ``Origin`` or ``Referer`` names another site is refused whatever it carries.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
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


def answered_names(bound: str, configured: tuple[str, ...] = ()) -> frozenset[str]:
    """The ``Host`` names a console bound to ``bound`` answers to when it has a token: the bound
    address, this machine's names and addresses, and ``console.hosts`` (loopback always)."""
    names = {bound, socket.gethostname(), socket.getfqdn(), *configured}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:  # a machine whose own name does not resolve
        pass
    return frozenset(n.lower() for n in names if n and n not in ("0.0.0.0", "::"))


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

    A request must also *name* the console in its ``Host`` (loopback; with a token also
    :func:`answered_names`): a page of another site whose name was rebound to the console's address
    (DNS rebinding) sends its own name there, and its Origin would match it.
    """
    settings = current_app.extensions[EXTENSION]
    token, name = settings["token"], urlparse(f"//{request.host}").hostname or ""
    if not loopback(name) and (not token or name not in settings["hosts"]):
        where = "its loopback address" if not token else f"{', '.join(sorted(settings['hosts']))}"
        abort(403, f"this console answers to {where}, not to {request.host!r} (see console.hosts)")
    if request.method != "POST":
        return None
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin and _origin(origin) != _origin(request.host_url):
        abort(403, "a POST from another site is refused")
    if token and request.endpoint != "console.login":
        if not hmac.compare_digest(supplied_token().encode(), token.encode()):
            abort(403, "labelling needs the console's token: open /login?token=... first")
    return None
