"""One-time login codes: ``mftd open`` asks for one and the dashboard trades it once for the token.

Codes live in memory only, expire after a few minutes and can be used once, so a code seen in a
terminal's scrollback or a browser's history is worthless soon after.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable

CODE_BYTES = 24
CODE_TTL_SECONDS = 300.0
MAX_OPEN_CODES = 32


class LoginCodes:
    """Issues and redeems one-time codes.

    Args:
        ttl_seconds: how long a code stays valid.
        clock: monotonic seconds; tests pass a fake one.
    """

    def __init__(self, ttl_seconds: float = CODE_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._expiry_by_code: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> str:
        """A new code; the oldest open code is dropped once ``MAX_OPEN_CODES`` are open."""
        code = secrets.token_urlsafe(CODE_BYTES)
        with self._lock:
            self._drop_expired()
            while len(self._expiry_by_code) >= MAX_OPEN_CODES:
                self._expiry_by_code.popitem(last=False)
            self._expiry_by_code[code] = self._clock() + self.ttl_seconds
        return code

    def redeem(self, code: str) -> bool:
        """True once for a code that was issued and has not expired; False for anything else."""
        with self._lock:
            self._drop_expired()
            for known in list(self._expiry_by_code):
                if secrets.compare_digest(known.encode(), code.encode()):
                    del self._expiry_by_code[known]
                    return True
        return False

    def _drop_expired(self) -> None:
        now = self._clock()
        for code, expiry in list(self._expiry_by_code.items()):
            if expiry <= now:
                del self._expiry_by_code[code]
