"""psutil and statvfs: the battery where psutil sees one, other processes' CPU load, free storage and memory.

Other processes' load is the machine's busy CPU time minus mftd's own (the daemon and every
process under it, the training worker included), over the time since the previous reading.
Android 8+ hides ``/proc/stat`` from apps, which makes that reading unavailable there.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import psutil

from mftd.sensors.base import Reading, available, describe_os_error, unavailable

SOURCE = "psutil"
NAMES = (
    "battery_present",
    "charging",
    "battery_percent",
    "others_cpu_percent",
    "free_storage_mb",
    "available_memory_mb",
    "total_memory_mb",
)
# A first reading needs a window to measure over; shorter ones are too noisy to mean anything.
MIN_CPU_WINDOW_SECONDS = 0.2


class PsutilSource:
    """Args:
    data_dir: free storage is measured where this is (its nearest existing parent).
    own_pid: the process whose tree counts as mftd's own load (default: this process).
    clock: monotonic seconds.
    sleep: waits out the first window (tests pass a no-op).
    """

    name = SOURCE
    names = NAMES

    def __init__(
        self,
        data_dir: Path,
        own_pid: Optional[int] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.data_dir = data_dir
        self.own_pid = own_pid or os.getpid()
        self.clock = clock
        self.sleep = sleep
        self._last_cpu: Optional[tuple[float, float, float]] = None

    def read(self) -> list[Reading]:
        return [*self._battery(), self._others_cpu(), self._free_storage(), *self._memory()]

    def _battery(self) -> list[Reading]:
        try:
            battery = psutil.sensors_battery()
        except (OSError, AttributeError, NotImplementedError) as error:
            reason = f"psutil could not read the battery: {error}"
            return [unavailable(name, SOURCE, reason) for name in ("battery_present", "charging", "battery_percent")]
        if battery is None:
            readings = [unavailable(name, SOURCE, "psutil sees no battery") for name in ("charging", "battery_percent")]
            # On Linux sysfs decides whether there is a battery (psutil cannot tell "none" from "hidden").
            if sys.platform.startswith("linux"):
                return [unavailable("battery_present", SOURCE, "psutil sees no battery"), *readings]
            return [available("battery_present", False, SOURCE), *readings]
        readings = [available("battery_present", True, SOURCE), available("battery_percent", round(battery.percent, 1), SOURCE)]
        if battery.power_plugged is None:
            readings.append(unavailable("charging", SOURCE, "psutil cannot tell whether it is plugged in"))
        else:
            readings.append(available("charging", bool(battery.power_plugged), SOURCE))
        return readings

    def _others_cpu(self) -> Reading:
        try:
            sample = self._cpu_sample()
            if self._last_cpu is None:
                self._last_cpu = sample
                self.sleep(MIN_CPU_WINDOW_SECONDS)
                sample = self._cpu_sample()
        except OSError as error:
            return unavailable("others_cpu_percent", SOURCE, describe_os_error(error, "/proc/stat"))
        except psutil.Error as error:
            return unavailable("others_cpu_percent", SOURCE, f"psutil: {error}")
        previous, self._last_cpu = self._last_cpu, sample
        wall = sample[0] - previous[0]
        if wall <= 0:
            return unavailable("others_cpu_percent", SOURCE, "no time passed since the last reading")
        busy = (sample[1] - previous[1]) - (sample[2] - previous[2])
        percent = max(0.0, min(100.0, 100 * busy / (wall * (psutil.cpu_count() or 1))))
        return available("others_cpu_percent", round(percent, 1), SOURCE)

    def _cpu_sample(self) -> tuple[float, float, float]:
        """(now, the machine's busy CPU seconds, mftd's own CPU seconds)."""
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        # guest time is already inside user time on Linux
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        return self.clock(), total - idle, _tree_cpu_seconds(self.own_pid)

    def _free_storage(self) -> Reading:
        where = self.data_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            return available("free_storage_mb", round(shutil.disk_usage(where).free / 2**20), f"statvfs {where}")
        except OSError as error:
            return unavailable("free_storage_mb", "statvfs", describe_os_error(error, where))

    def _memory(self) -> list[Reading]:
        try:
            memory = psutil.virtual_memory()
        except OSError as error:
            reason = describe_os_error(error, "/proc/meminfo")
            return [unavailable("available_memory_mb", SOURCE, reason), unavailable("total_memory_mb", SOURCE, reason)]
        return [
            available("available_memory_mb", round(memory.available / 2**20), SOURCE),
            available("total_memory_mb", round(memory.total / 2**20), SOURCE),
        ]


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children, and its live descendants."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        children = process.children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        total += child_times.user + child_times.system
    return total
