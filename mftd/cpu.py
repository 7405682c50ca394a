"""Which cores training should use, and whether the CPU multiplies bfloat16 fast; read from sysfs and /proc, no torch.

Phones are big.LITTLE: a Snapdragon 8 Gen 2 has one Cortex-X3, four Cortex-A715/A710 and three
Cortex-A510. torch splits a matmul into equal parts, one per thread, so a thread on a little core
makes every other thread wait for it; training threads belong on the performance cores only.

How fast a core is comes from ``cpuN/cpu_capacity``: the scheduler's measure of a core's work per
second at its top clock, 1024 for the fastest (arm64 reads it from the device tree's
``capacity-dmips-mhz``). Mainline Linux gives the Snapdragon 8 Gen 2's cores 326, 693 and 1024
DMIPS/MHz; at 2.0, 2.8 and 3.2 GHz that makes capacities of about 206 (A510), 609 (A715/A710) and
1024 (X3). For the Snapdragon 865 (448 and 1024 DMIPS/MHz; four A55 at 1.8 GHz, three A77 at 2.4
and one at 2.84) it is about 284, 871 and 1024. A core counts as a performance core at half the
top capacity or more: big and prime cores stay together, little cores (a fifth to a third of the
top) are left out.

Where every capacity is the same (a device tree without ``capacity-dmips-mhz``, or an x86 box)
or there is none, the cores' top clocks (``cpuN/cpufreq/cpuinfo_max_freq``) are compared
instead. A clock says less than a capacity: a little core does a third to a half of a big core's
work per cycle, so its clock is 0.6 to 0.8 of the top one (8 Gen 2: 2.0 of 3.19 GHz; 865: 1.8 of
2.84; Snapdragon 778G: 1.9 of 2.4). Cores at 80% of the top clock or more count; mid-range chips
whose little clocks come closer (Helio G99: 2.0 of 2.2 GHz) keep all their cores, which is what
torch would use anyway. When sysfs tells nothing, every core this process may use counts.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from pathlib import Path
from typing import Iterable, Optional

SYSFS_CPU_DIR = Path("/sys/devices/system/cpu")
CPUINFO_PATH = Path("/proc/cpuinfo")
THREADS_DIR = Path("/proc/self/task")
# Part of the top value a core needs to count as a performance core (see the module docstring).
CAPACITY_FRACTION = 0.5
CLOCK_FRACTION = 0.8
CAPACITY_FILE = "cpu_capacity"
MAX_CLOCK_FILE = "cpufreq/cpuinfo_max_freq"
# Instructions that multiply bfloat16 natively: x86 AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4)
# and AMX-BF16 (Sapphire Rapids); Arm's BF16 extension (ARMv8.6, Cortex-X2/A710/A510 and later).
X86_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ARM_BFLOAT16_FEATURE = "bf16"
_CORE_DIR_NAME = re.compile(r"cpu(\d+)")


def allowed_cores() -> set[int]:
    """The cores this process may run on (its affinity mask; Android narrows it with cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def performance_cores(sysfs_cpu: Path = SYSFS_CPU_DIR, allowed: Optional[set[int]] = None) -> list[int]:
    """The online cores this process may use that are fast enough to train on (see the module docstring).

    Args:
        sysfs_cpu: the kernel's CPU folder (``cpuN/`` subfolders, the ``online`` list).
        allowed: the cores this process may use; default: its affinity mask.

    Returns:
        Core numbers in ascending order; never empty while ``allowed`` is not, and always a subset of it.
    """
    allowed = allowed_cores() if allowed is None else set(allowed)
    candidates = sorted(allowed & _online_cores(sysfs_cpu, allowed))
    if not candidates:  # sysfs knows none of the cores the OS lets us use: trust the OS
        return sorted(allowed)
    for file_name, fraction in ((CAPACITY_FILE, CAPACITY_FRACTION), (MAX_CLOCK_FILE, CLOCK_FRACTION)):
        values = {core: _read_int(sysfs_cpu / f"cpu{core}" / file_name) for core in candidates}
        known = {core: value for core, value in values.items() if value is not None and value > 0}
        # Partial readings cannot rank the cores they miss, and equal ones cannot rank any.
        if len(known) == len(candidates) and len(set(known.values())) > 1:
            top = max(known.values())
            return [core for core in candidates if known[core] >= fraction * top]
    return candidates


def default_num_threads(sysfs_cpu: Path = SYSFS_CPU_DIR, allowed: Optional[set[int]] = None) -> int:
    """Training threads when a job sets none: one per performance core, so never more than the cores allowed."""
    return len(performance_cores(sysfs_cpu, allowed))


@functools.lru_cache(maxsize=8)  # the daemon asks at every submit; a CPU's instructions do not change
def has_fast_bfloat16(cpuinfo: Path = CPUINFO_PATH) -> bool:
    """Whether every core has instructions that multiply bfloat16 (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``).

    With them a bfloat16 matmul does about twice the float32 work per cycle. Without them torch
    converts bfloat16 to float32 and back around float32 arithmetic, which is slower than float32
    throughout, so bfloat16 then only saves memory.

    Args:
        cpuinfo: ``/proc/cpuinfo``; its ``flags`` (x86) or ``Features`` (Arm) line per core is read.

    Returns:
        False also when the file cannot be read or lists no flags.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flag_sets = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flag_sets.append(set(value.split()))
    return bool(flag_sets) and all(flags & X86_BFLOAT16_FLAGS or ARM_BFLOAT16_FEATURE in flags for flags in flag_sets)


def pin_to_cores(cores: Iterable[int]) -> None:
    """Restrict every thread of this process, and the threads it starts later, to ``cores``.

    Linux sets the affinity of one thread at a time, so each thread that exists now is pinned;
    new threads inherit the mask of the thread that starts them.

    Raises:
        OSError: the platform cannot pin threads, or the kernel refused the mask (cores outside the cpuset).
    """
    if not hasattr(os, "sched_setaffinity"):
        raise OSError(errno.ENOSYS, "this platform cannot pin threads to cores")
    mask = set(cores)
    os.sched_setaffinity(0, mask)  # this thread first, so that a refused mask raises before anything changed
    try:
        thread_ids = [int(path.name) for path in THREADS_DIR.iterdir()]
    except OSError:
        return
    for thread_id in thread_ids:
        try:
            os.sched_setaffinity(thread_id, mask)
        except ProcessLookupError:  # the thread ended meanwhile
            continue


def parse_core_list(text: str) -> set[int]:
    """Cores of a kernel CPU list such as ``0-3,5,7-8`` (the format of ``online``); empty for an empty list."""
    cores: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def format_core_list(cores: Iterable[int]) -> str:
    """The kernel's CPU-list form of ``cores``: ``[0, 1, 2, 3, 5]`` -> ``0-3,5``."""
    ordered = sorted(set(cores))
    runs: list[str] = []
    start = previous = None
    for core in ordered + [None]:
        if start is not None and core == previous + 1:
            previous = core
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = core
    return ",".join(runs)


def _online_cores(sysfs_cpu: Path, allowed: set[int]) -> set[int]:
    """Online cores from the ``online`` list, else from each ``cpuN/online`` (absent: online, as for cpu0)."""
    try:
        return parse_core_list((sysfs_cpu / "online").read_text())
    except (OSError, ValueError):
        pass
    try:
        core_dirs = [path for path in sysfs_cpu.iterdir() if _CORE_DIR_NAME.fullmatch(path.name)]
    except OSError:
        return set(allowed)  # no sysfs at all (not Linux)
    online = set()
    for core_dir in core_dirs:
        if _read_int(core_dir / "online") != 0:
            online.add(int(_CORE_DIR_NAME.fullmatch(core_dir.name).group(1)))
    return online


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
