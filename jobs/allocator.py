"""Set the worker's malloc mmap threshold to the memory plan's allocator setting, with glibc's mallopt.

The worker starts with the lean setting in its environment (``mftd.protocol.worker_environment``):
tokenizing and planning run under it. Once the plan is made, before the model loads, a "fast" plan raises the threshold to
16 MB (tensors below it are then reused from the heap instead of being mapped and faulted in
afresh); a "lean" one keeps 1 MB. Setting the threshold also pins the trim threshold (glibc would
otherwise have slid it up with a sliding mmap threshold), so freed memory at the top of the heap
still goes back to the system.

Nothing is changed when the user set MALLOC_MMAP_THRESHOLD_ (their setting wins), or on a C library
other than glibc: Android's bionic has a mallopt with other parameters, musl has none.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Mapping, Optional

from jobs.reporting import JobReporter
from mftd.protocol import MALLOC_DEFAULTS_ENV, MMAP_THRESHOLD_ENV, MMAP_THRESHOLDS, is_user_setting

# glibc's malloc.h parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's default trim threshold: freed memory at the top of the heap beyond it goes back to the system.
TRIM_THRESHOLD_BYTES = 128 * 1024
TRIM_THRESHOLD_ENV = "MALLOC_TRIM_THRESHOLD_"


@dataclass(frozen=True)
class AllocatorOutcome:
    """What became of the plan's allocator setting."""

    setting: str
    applied: bool
    mmap_threshold: Optional[int]
    reason: str
    by_user: bool = False  # the user's own MALLOC_MMAP_THRESHOLD_ is in force

    def to_json(self) -> dict:
        return {"allocator": self.setting, "applied": self.applied, "mmap_threshold": self.mmap_threshold, "reason": self.reason, "by_user": self.by_user}


def load_glibc() -> Optional[ctypes.CDLL]:
    """The process's C library if it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def set_allocator(setting: str, environment: Mapping[str, str] = os.environ, libc: Optional[ctypes.CDLL] = None) -> AllocatorOutcome:
    """Set the mmap threshold of ``setting`` ("fast" or "lean", ``MMAP_THRESHOLDS``) in this process.

    Args:
        setting: the memory plan's allocator.
        environment: where a user's own MALLOC_MMAP_THRESHOLD_ is looked for.
        libc: the C library to call (default: this process's, if it is glibc).

    Returns:
        Whether the threshold was set, and why not when it was not.
    """
    threshold = MMAP_THRESHOLDS[setting]
    if is_user_setting(MMAP_THRESHOLD_ENV, environment):
        value = environment[MMAP_THRESHOLD_ENV]
        # The plan was made for the setting this amounts to (mftd.protocol.users_allocator).
        return AllocatorOutcome(setting, False, None, f"{MMAP_THRESHOLD_ENV}={value} set in the environment, which the plan counts", by_user=True)
    libc = libc or load_glibc()
    if libc is None:
        return AllocatorOutcome(setting, False, None, "the C library is not glibc (no gnu_get_libc_version); its allocator is left as it is")
    if libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        return AllocatorOutcome(setting, False, None, f"glibc's mallopt refused an mmap threshold of {threshold} bytes")
    if not is_user_setting(TRIM_THRESHOLD_ENV, environment):
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return AllocatorOutcome(setting, True, threshold, f"mallopt on glibc {libc.gnu_get_libc_version().decode()}")


def use_allocator(setting: str, reporter: JobReporter) -> AllocatorOutcome:
    """Set the plan's allocator in this worker and say what happened in the job's events."""
    outcome = set_allocator(setting)
    if outcome.applied:
        message = f"allocator: {setting} (mmap threshold {outcome.mmap_threshold // (1 << 20)} MB, {outcome.reason})"
    elif outcome.by_user:
        message = f"allocator: {setting} ({outcome.reason})"
    else:
        message = f"allocator: the plan's {setting} setting is not applied: {outcome.reason}"
    reporter.event(message, kind="memory", data=outcome.to_json())
    return outcome
