"""A small HTTP client for the daemon's API, used by the ``mftd`` command line.

It finds the daemon (``--url``, ``MFTD_URL``, ``<data dir>/daemon.json``, else the configured
port on loopback) and its token (``--token``, ``MFTD_TOKEN``, ``<data dir>/token``), and turns
every failure into one of two errors with a message a person can act on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx

from mftd.errors import MftdError

DAEMON_INFO_FILENAME = "daemon.json"


class DaemonNotRunningError(MftdError):
    """Nothing answers at the daemon's URL."""

    def __init__(self, url: str):
        self.url = url
        super().__init__(f"mftd is not running at {url}; start it with `mftd serve`")


class ApiError(MftdError):
    """The daemon answered with an error; ``detail`` is its explanation."""

    def __init__(self, status_code: int, detail: str):
        self.status_code = status_code
        self.detail = detail
        super().__init__(detail)


def find_url(data_dir: Path, port: int, url: Optional[str] = None) -> str:
    """The daemon's base URL: ``url``, ``MFTD_URL``, the running daemon's ``daemon.json``, else loopback on ``port``."""
    url = url or os.environ.get("MFTD_URL")
    if url:
        return url.rstrip("/")
    try:
        info = json.loads((data_dir / DAEMON_INFO_FILENAME).read_text())
        return str(info["url"]).rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        return f"http://127.0.0.1:{port}"


def find_token(data_dir: Path, token: Optional[str] = None) -> Optional[str]:
    """The API token: ``token``, ``MFTD_TOKEN``, or the contents of ``<data dir>/token`` (None if unreadable)."""
    token = token or os.environ.get("MFTD_TOKEN")
    if token:
        return token.strip()
    try:
        return (data_dir / "token").read_text().strip() or None
    except OSError:
        return None


def describe_error_body(response: httpx.Response) -> str:
    """The server's ``detail`` as one line (a 422's field errors joined), or the raw body."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text or f"HTTP {response.status_code} {response.reason_phrase}"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                location = [str(part) for part in item.get("loc", []) if part not in ("body", "query", "path", "form")]
                prefix = f"{'.'.join(location)}: " if location else ""
                parts.append(prefix + str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict):
        return str(detail.get("message") or json.dumps(detail))
    return str(detail)


class Client:
    """Calls the daemon's ``/v1`` routes with the bearer token.

    Raises (from every call):
        DaemonNotRunningError: the connection was refused.
        ApiError: the daemon answered 4xx or 5xx.
    """

    def __init__(self, url: str, token: Optional[str], timeout: float = 60.0):
        self.url = url
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise DaemonNotRunningError(self.url) from error
        except httpx.HTTPError as error:
            raise ApiError(0, f"talking to mftd at {self.url} failed: {error}") from error
        self._raise_for_status(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs) -> Any:
        return self.request("DELETE", path, **kwargs)

    def stream_events(self, job_id: int, last_event_id: Optional[str] = None) -> Iterator[tuple[Optional[str], dict]]:
        """Yield ``(event id, event)`` from the job's Server-Sent Events stream until the server closes it."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(30.0, read=None)
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response)
                yield from _parse_sse(response.iter_lines())
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise DaemonNotRunningError(self.url) from error

    def stream(self, path: str) -> Iterator[tuple[str, Any]]:
        """Yield ``(event name, data)`` from a Server-Sent Events route until the server closes it."""
        timeout = httpx.Timeout(30.0, read=None)
        try:
            with self._http.stream("GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for_status(response)
                for _event_id, name, data in _sse_messages(response.iter_lines()):
                    yield name, data
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise DaemonNotRunningError(self.url) from error
        except httpx.RemoteProtocolError:
            return  # the daemon went away mid-stream; the caller reconnects

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        detail = describe_error_body(response)
        if response.status_code == 401:
            detail = f"{detail} (the daemon refused the token: pass --token, set MFTD_TOKEN, or check <data dir>/token)"
        raise ApiError(response.status_code, detail)


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[Optional[str], dict]]:
    for event_id, _name, payload in _sse_messages(lines):
        if isinstance(payload, dict):
            yield event_id, payload


def _sse_messages(lines: Iterator[str]) -> Iterator[tuple[Optional[str], str, Any]]:
    """``(last event id, event name, data)`` per message; data is parsed JSON, or ``{"message": text}``."""
    event_id: Optional[str] = None
    name = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = {"message": text}
                yield event_id, name, payload
            data = []
            name = "message"
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
        elif field == "event":
            name = value
