"""A real cgroup v1 memory cgroup with a limit, for running a daemon (and so its workers) under the kernel's OOM killer."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Optional

CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
MB = 1024 * 1024


def own_memory_cgroup(root: Path = CGROUP_V1_MEMORY) -> Path:
    """This process's memory cgroup folder: a test cgroup goes under it, so it stays inside whatever limits the tests run under."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return root / path.lstrip("/")
    return root


def cgroup_unavailable_reason(root: Path = CGROUP_V1_MEMORY) -> Optional[str]:
    """Why a memory cgroup cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "creating a memory cgroup needs root"
    if not (root / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {root}"
    if not os.access(own_memory_cgroup(root), os.W_OK):
        return f"{own_memory_cgroup(root)} is not writable"
    return None


class MemoryCgroup:
    """``mftd-test-<random>`` under this process's memory cgroup, limited to ``limit_mb`` (None: no limit, to measure)."""

    def __init__(self, limit_mb: Optional[float]):
        self.path = own_memory_cgroup() / f"mftd-test-{secrets.token_hex(4)}"
        self.path.mkdir()
        if limit_mb is not None:
            (self.path / "memory.limit_in_bytes").write_text(str(int(limit_mb * MB)))

    def command_prefix(self) -> list[str]:
        """Prefix for a command line: the shell moves itself into the cgroup, then execs the command (same pid)."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path)]

    @property
    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill line in {self.path / 'memory.oom_control'}")

    @property
    def max_usage_mb(self) -> float:
        return int((self.path / "memory.max_usage_in_bytes").read_text()) / MB

    def reset_max_usage(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def remove(self, timeout: float = 30.0) -> None:
        """Remove the cgroup once the processes in it have exited (rmdir fails while it holds any)."""
        deadline = time.monotonic() + timeout
        while (self.path / "cgroup.procs").read_text().strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"processes still in {self.path} after {timeout} s: {(self.path / 'cgroup.procs').read_text().split()}")
            time.sleep(0.1)
        self.path.rmdir()
