"""Evidence that a worker killed by SIGKILL was killed for memory: the kernel's out-of-memory kill counters, or its share of memory.

A SIGKILL the daemon did not send comes from the kernel's OOM killer, from Android's low-memory
killer (lmkd) or phantom process killer, or from a person. Only the first two are about memory, and
only memory kills are worth retrying with a smaller micro-batch, so the daemon needs evidence:

- The kernel counts every OOM kill: per memory cgroup (``oom_kill`` in ``memory.events`` on cgroup
  v2, in ``memory.oom_control`` on v1; the victim's own cgroup, which is the daemon's, since the
  worker inherits it) and machine-wide (``oom_kill`` in ``/proc/vmstat``). A count that grew while the
  worker ran is the evidence. The daemon's cgroup counter is preferred: it counts only kills in that
  cgroup (a global OOM kill of the worker too), while the machine-wide one also counts kills of
  unrelated processes that happen at the same time.
- Android's lmkd kills with a plain SIGKILL that no counter sees. There the only sign is the
  worker's memory use: if its last sampled RSS was most of what it could have had (its RSS plus the
  memory still available), memory is the likely reason. The sample is taken at the daemon's tick, so
  a peak between two ticks is missed and such a kill stays a plain interruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

MB = 1024 * 1024
# A worker holding this much of (its RSS + the memory still available) was close enough to the edge
# that a SIGKILL without a counter is taken as the low-memory killer's.
MEMORY_KILL_SHARE = 0.75


@dataclass(frozen=True)
class OomKillCount:
    """How many processes the OOM killer had killed, as counted in ``source``."""

    source: str
    count: int


@dataclass(frozen=True)
class WorkerMemory:
    """The worker's resident memory and the memory still available to it, at one moment."""

    rss_mb: float
    available_mb: float

    @property
    def share(self) -> float:
        """The part of what the worker could have had that it held."""
        total = self.rss_mb + self.available_mb
        return self.rss_mb / total if total > 0 else 0.0


def read_oom_kill_count(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> Optional[OomKillCount]:
    """The OOM kill count of this process's memory cgroup, else the machine's; None where neither can be read.

    Args:
        proc: where procfs is mounted (a test points it at a folder of files).
        cgroup_root: where the cgroup file systems are mounted.
    """
    candidates = _cgroup_counter_files(proc / "self" / "cgroup", cgroup_root) + [proc / "vmstat"]
    for path in candidates:
        count = _oom_kill_line(path)
        if count is not None:
            return OomKillCount(str(path), count)
    return None


def oom_kills_between(before: Optional[OomKillCount], after: Optional[OomKillCount]) -> Optional[int]:
    """OOM kills counted between two readings of the same counter; None when they cannot be compared."""
    if before is None or after is None or before.source != after.source:
        return None
    return after.count - before.count


def sample_worker_memory(pid: int) -> Optional[WorkerMemory]:
    """RSS of the worker and the processes it started, and the memory available; None if it is gone."""
    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
        rss = 0
        for each in processes:
            try:
                rss += each.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        available = psutil.virtual_memory().available
    except (psutil.Error, OSError):  # gone, or /proc/meminfo closed to apps
        return None
    return WorkerMemory(rss_mb=rss / MB, available_mb=available / MB)


def _cgroup_counter_files(self_cgroup: Path, cgroup_root: Path) -> list[Path]:
    """The files that hold this process's memory cgroup OOM kill count (``/proc/self/cgroup`` names the cgroup)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return []
    files: list[Path] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = path.strip().lstrip("/")
        if "memory" in controllers.split(","):
            files.append(cgroup_root / "memory" / relative / "memory.oom_control")
        elif controllers == "" and relative:  # cgroup v2 (the root cgroup has no memory.events)
            files += [cgroup_root / relative / "memory.events", cgroup_root / "unified" / relative / "memory.events"]
    return files


def _oom_kill_line(path: Path) -> Optional[int]:
    """The number on the ``oom_kill`` line of a kernel counter file; None if the file or the line is missing."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None
