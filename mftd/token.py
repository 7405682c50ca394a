"""The API's bearer token: one secret in ``<data dir>/token`` (mode 0600), created on first start."""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

TOKEN_BYTES = 32
PRIVATE_MODE = 0o600


def load_or_create_token(path: Path) -> str:
    """The token stored at ``path``; a new random one is written there (mode 0600) if there is none.

    A token file readable by others is narrowed to 0600, since on Android every app can reach
    127.0.0.1 and the token is the only thing between them and the API. An empty file (a crash
    while writing it) gets a new token.

    Args:
        path: the token file, normally ``Settings.token_path``.

    Returns:
        The token, without surrounding whitespace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _narrow_permissions(path)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
        path.unlink()
    return _create_token(path)


def _narrow_permissions(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, PRIVATE_MODE)


def _create_token(path: Path) -> str:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    descriptor, temp_name = tempfile.mkstemp(prefix=".token-", dir=path.parent)  # mkstemp files are 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            # A hard link publishes the full file at once and fails if another daemon won the race.
            os.link(temp_name, path)
        except FileExistsError:
            return load_or_create_token(path)
        except OSError:
            os.replace(temp_name, path)  # a file system without hard links
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    os.chmod(path, PRIVATE_MODE)
    return token
