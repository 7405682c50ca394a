"""Reading the kernel's OOM kill counters: cgroup v1 and v2 files written into tmp_path as the kernel lays them out, and this machine's own."""

from __future__ import annotations

import os
from pathlib import Path

from mftd.oom_evidence import OomKillCount, WorkerMemory, oom_kills_between, read_oom_kill_count, sample_worker_memory

VMSTAT = "pgfault 123\noom_kill 7\npgmajfault 2\n"
OOM_CONTROL_V1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
MEMORY_EVENTS_V2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v1_memory_controller_is_read_before_vmstat(tmp_path):
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self" / "cgroup", "5:cpu,cpuacct:/a\n4:memory:/apps/mftd\n0::/\n")
    write(proc / "vmstat", VMSTAT)
    counter = write(cgroups / "memory" / "apps" / "mftd" / "memory.oom_control", OOM_CONTROL_V1)
    assert read_oom_kill_count(proc, cgroups) == OomKillCount(str(counter), 3)


def test_cgroup_v2_memory_events_is_read_where_unified_is_mounted(tmp_path):
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self" / "cgroup", "0::/user.slice/mftd.service\n")
    write(proc / "vmstat", VMSTAT)
    counter = write(cgroups / "unified" / "user.slice" / "mftd.service" / "memory.events", MEMORY_EVENTS_V2)
    assert read_oom_kill_count(proc, cgroups) == OomKillCount(str(counter), 2)


def test_vmstat_when_no_cgroup_counter_can_be_read(tmp_path):
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self" / "cgroup", "0::/\n")  # the v2 root cgroup has no memory.events
    write(proc / "vmstat", VMSTAT)
    assert read_oom_kill_count(proc, cgroups) == OomKillCount(str(proc / "vmstat"), 7)


def test_nothing_readable_is_none(tmp_path):
    """As for an app on Android, whose lmkd kills are counted nowhere it can read."""
    write(tmp_path / "proc" / "vmstat", "pgfault 123\n")  # a kernel older than 4.13 has no oom_kill line
    assert read_oom_kill_count(tmp_path / "proc", tmp_path / "cgroup") is None


def test_kills_between_readings_of_the_same_counter_only():
    before = OomKillCount("/proc/vmstat", 4)
    assert oom_kills_between(before, OomKillCount("/proc/vmstat", 6)) == 2
    assert oom_kills_between(before, OomKillCount("/sys/fs/cgroup/memory/memory.oom_control", 6)) is None
    assert oom_kills_between(None, before) is None


def test_this_machine_has_a_counter_where_linux_has_one():
    reading = read_oom_kill_count()
    if Path("/proc/vmstat").exists() and "oom_kill " in Path("/proc/vmstat").read_text():
        assert reading is not None and reading.count >= 0


def test_worker_memory_share():
    assert WorkerMemory(rss_mb=3000, available_mb=1000).share == 0.75
    assert WorkerMemory(rss_mb=0, available_mb=0).share == 0.0
    sample = sample_worker_memory(os.getpid())
    assert sample is not None and sample.rss_mb > 10 and sample.available_mb > 0
    assert sample_worker_memory(2**22 + 12345) is None
