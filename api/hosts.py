"""Refuse requests whose ``Host`` is not one of the daemon's own names, so a web page cannot reach it by DNS rebinding.

A page on ``http://evil.example`` whose name is re-pointed to 127.0.0.1 makes the browser send
``Host: evil.example``; answering only to loopback names (and names the user configured) stops it.
A loopback name is accepted on any port, so ``adb forward`` and other port forwards keep working:
the port plays no part in rebinding.
"""

from __future__ import annotations

from typing import Optional

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mftd.settings import Settings, is_loopback_host

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def allowed_host_names(settings: Settings) -> frozenset[str]:
    """The names besides loopback ones that the API answers to: ``allowed_hosts``, and the listen address with ``allow_remote``."""
    names = {name.strip().strip("[]").lower() for name in settings.allowed_hosts if name.strip()}
    if settings.allow_remote and settings.host not in WILDCARD_HOSTS:
        names.add(settings.host.strip("[]").lower())
    return frozenset(names)


def host_name(header: str) -> Optional[str]:
    """The name in a ``Host`` header (``'[::1]:8765'`` gives ``'::1'``), or None if the header is malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        name, rest = header[1:end], header[end + 1 :]
    else:
        name, separator, port = header.partition(":")
        rest = separator + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    return name or None


class LoopbackHostMiddleware:
    """Answers 421 with a JSON explanation to any request whose Host is neither loopback nor in ``allowed_names``."""

    def __init__(self, app: ASGIApp, allowed_names: frozenset[str]) -> None:
        self.app = app
        self.allowed_names = allowed_names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host", "")
        name = host_name(header)
        if name is not None and (is_loopback_host(name) or name in self.allowed_names):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(status_code=421, content={"detail": self._refusal(header)})
        await response(scope, receive, send)

    def _refusal(self, header: str) -> str:
        names = ", ".join(["127.0.0.1", "localhost", "[::1]", *sorted(self.allowed_names)])
        shown = repr(header[:200]) if header else "missing"
        return (
            f"refused: the Host header is {shown}, but mftd answers only to {names}. A web page on another site may be "
            "trying to reach the daemon through DNS rebinding. Open mftd at http://127.0.0.1:<port>/, or, if you serve it "
            "under that name on purpose, add the name to MFTD_ALLOWED_HOSTS."
        )
