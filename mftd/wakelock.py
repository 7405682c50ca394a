"""Termux's wake lock: held while a worker trains, so Android does not put the CPU to sleep under it.

``termux-wake-lock`` and ``termux-wake-unlock`` come with Termux (termux-tools). Elsewhere the
commands do not exist and this does nothing. A failing command is logged, never raised: a missing
wake lock slows training down when the screen goes off, it does not lose work.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

LOCK_COMMAND = "termux-wake-lock"
UNLOCK_COMMAND = "termux-wake-unlock"
COMMAND_TIMEOUT_SECONDS = 15.0


class WakeLock:
    """Args:
    enabled: False never calls the commands (``MFTD_WAKE_LOCK=0``).
    lock_command, unlock_command: the commands' names (found on PATH when called).
    """

    def __init__(self, enabled: bool = True, lock_command: str = LOCK_COMMAND, unlock_command: str = UNLOCK_COMMAND):
        self.enabled = enabled
        self.lock_command = lock_command
        self.unlock_command = unlock_command
        self.is_held = False

    def acquire(self) -> bool:
        """Take the wake lock if the command exists; True if it is held."""
        if self.enabled and not self.is_held and self._run(self.lock_command):
            self.is_held = True
            log.info("wake lock taken (%s)", self.lock_command)
        return self.is_held

    def release(self) -> None:
        """Give it back, if this process took it."""
        if self.is_held:
            self._run(self.unlock_command)
            self.is_held = False
            log.info("wake lock released (%s)", self.unlock_command)

    def _run(self, command: str) -> bool:
        path = shutil.which(command)
        if path is None:
            return False
        try:
            result = subprocess.run([path], stdin=subprocess.DEVNULL, capture_output=True, timeout=COMMAND_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("%s failed: %s", command, error)
            return False
        if result.returncode != 0:
            log.warning("%s exited with %s: %s", command, result.returncode, result.stderr.decode(errors="replace").strip()[:200])
            return False
        return True
