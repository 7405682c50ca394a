"""Stop requests: SIGTERM and SIGINT set a flag that the training loop reads between micro-batches.

The daemon stops a worker with SIGTERM (pause, cancel, device conditions). If the daemon itself dies,
Linux sends the worker SIGTERM too (``PR_SET_PDEATHSIG``), so the worker checkpoints and exits
instead of training on unsupervised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from typing import Optional

PR_SET_PDEATHSIG = 1

logger = logging.getLogger(__name__)


class StopSignal:
    """A flag that says "stop at the next micro-batch boundary", with the reason it was raised."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: Optional[str] = None

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_requested(self) -> bool:
        return self._event.is_set()


def install_stop_handlers(stop: StopSignal) -> None:
    """Make SIGTERM and SIGINT request a stop instead of killing the process (call from the main thread)."""

    def _request_stop(signal_number: int, _frame) -> None:
        stop.request(signal.Signals(signal_number).name)

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)


def ask_for_sigterm_when_parent_dies(stop: StopSignal) -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies.

    Linux delivers it when the *thread* that started this process exits, so the daemon must start
    workers from a thread that lives as long as the daemon.

    Returns:
        True if the request was made; False where it is unavailable (not Linux, no libc).
    """
    if not sys.platform.startswith("linux"):
        return False
    parent_pid = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed with errno %d; the worker will not stop if the daemon dies", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as error:
        logger.warning("prctl is unavailable (%s); the worker will not stop if the daemon dies", error)
        return False
    # The parent may have died before the request was made; then no signal will ever come.
    if os.getppid() != parent_pid:
        stop.request("parent died")
    return True
