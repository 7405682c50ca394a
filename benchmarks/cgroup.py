"""Run a command in a child memory cgroup (cgroup v1) with a hard cap, and read what it used and whether it was killed.

The cap is a real limit, as on a phone: the kernel reclaims page cache inside the group and
OOM-kills the child when anonymous memory does not fit. Swap is capped to the same value when
the kernel accounts it, so that swapping cannot hide an overrun. Needs root.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CGROUP_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
MB = 1024 * 1024


@dataclass(frozen=True)
class CappedRun:
    """How a capped child ended and what it used."""

    exit_status: int  # as from os.wait4: 0 is success, a signal in the low byte
    output: str
    cgroup_max_usage_mb: float  # memory.max_usage_in_bytes: anonymous memory and page cache charged to the group
    peak_rss_mb: float  # the child's ru_maxrss
    oom_killed: bool

    @property
    def succeeded(self) -> bool:
        return self.exit_status == 0


def check_cgroup_support() -> Optional[str]:
    """Why capped runs cannot happen here, or None when they can."""
    if not (CGROUP_MEMORY_ROOT / "memory.limit_in_bytes").is_file():
        return f"no cgroup v1 memory controller at {CGROUP_MEMORY_ROOT}"
    if os.geteuid() != 0:
        return "creating a memory cgroup needs root"
    return None


def run_capped(name: str, command: list[str], cap_mb: int, cwd: Path, environment: Optional[dict[str, str]] = None) -> CappedRun:
    """Run ``command`` in a fresh cgroup ``mftd-bench-<name>`` capped at ``cap_mb``; the group is removed afterwards.

    The child joins the group itself before ``exec``, so the parent (this process) is never charged.
    """
    group = CGROUP_MEMORY_ROOT / f"mftd-bench-{name}"
    if group.exists():
        group.rmdir()  # left over from an interrupted run; rmdir fails loudly if a process is still in it
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(cap_mb * MB))
        if (group / "memory.memsw.limit_in_bytes").is_file():
            (group / "memory.memsw.limit_in_bytes").write_text(str(cap_mb * MB))
        shell = f"echo $$ > {shlex.quote(str(group / 'cgroup.procs'))}; exec {shlex.join(command)}"
        child = subprocess.Popen(["sh", "-c", shell], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=environment, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = status  # reaped here; keeps Popen from waiting again
        return CappedRun(
            exit_status=status,
            output=output,
            cgroup_max_usage_mb=int((group / "memory.max_usage_in_bytes").read_text()) / MB,
            peak_rss_mb=usage.ru_maxrss / 1024,
            oom_killed=_oom_kills(group) > 0,
        )
    finally:
        group.rmdir()


def _oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0
