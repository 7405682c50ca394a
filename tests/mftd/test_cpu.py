"""Performance cores and bfloat16 support, from fake sysfs trees and /proc/cpuinfo excerpts laid out as real devices show them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from mftd.cpu import default_num_threads, format_core_list, has_fast_bfloat16, parse_core_list, performance_cores

# Snapdragon 8 Gen 2: three A510, four A715/A710, one X3 (capacities from mainline's capacity-dmips-mhz and the top clocks).
SNAPDRAGON_8_GEN_2_CAPACITY = [206] * 3 + [609] * 4 + [1024]
SNAPDRAGON_8_GEN_2_MAX_KHZ = [2016000] * 3 + [2803200] * 4 + [3187200]
# Snapdragon 865: four A55, three A77, one A77 prime.
SNAPDRAGON_865_CAPACITY = [284] * 4 + [871] * 3 + [1024]
SNAPDRAGON_865_MAX_KHZ = [1804800] * 4 + [2419200] * 3 + [2841600]

X86_WITH_BF16_CORE = """\
vendor_id	: AuthenticAMD
cpu family	: 25
model name	: AMD EPYC
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext \
fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma \
cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm avx2 bmi2 avx512f avx512dq avx512ifma \
avx512cd sha_ni avx512bw avx512vl xsaveopt avx512_bf16 clzero avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg rdpid fsrm
"""
# Two cores, each with its own block, as the kernel writes them.
X86_WITH_BF16 = "\n".join(f"processor\t: {number}\n{X86_WITH_BF16_CORE}" for number in range(2))
# Skylake-SP: AVX-512 without its BF16 extension (torch runs bfloat16 matmuls on it, emulated).
X86_WITHOUT_BF16 = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe \
syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq \
dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c \
rdrand lahf_lm abm 3dnowprefetch avx2 smep bmi2 erms invpcid rtm mpx avx512f avx512dq rdseed adx smap clflushopt clwb intel_pt \
avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves pku ospke md_clear flush_l1d
"""
# A Snapdragon 8 Gen 2 phone: Cortex-A510 (0xd46) and Cortex-X3 (0xd4e) rows, ARMv9 with BF16 and I8MM.
ARM64_CORTEX_X3 = """\
processor	: 0
BogoMIPS	: 38.40
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 \
asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp flagm2 frint i8mm bf16 bti
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd46
CPU revision	: 0

processor	: 7
BogoMIPS	: 38.40
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 \
asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp flagm2 frint i8mm bf16 bti
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd4e
CPU revision	: 0
"""
# A Snapdragon 855 phone: Kryo 485 silver and gold (Qualcomm's A55 and A76, parts 0x805 and 0x804), ARMv8.2 without BF16.
ARM64_CORTEX_A76 = """\
processor	: 0
BogoMIPS	: 38.40
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x51
CPU architecture: 8
CPU variant	: 0xd
CPU part	: 0x805
CPU revision	: 14

processor	: 7
BogoMIPS	: 38.40
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x51
CPU architecture: 8
CPU variant	: 0xd
CPU part	: 0x804
CPU revision	: 14
"""


def make_sysfs(
    root: Path,
    capacities: Optional[list[int]] = None,
    max_khz: Optional[list[int]] = None,
    count: Optional[int] = None,
    online: Optional[str] = "",
) -> Path:
    """A ``/sys/devices/system/cpu`` tree: ``cpuN/cpu_capacity``, ``cpuN/cpufreq/cpuinfo_max_freq`` and ``online`` ("" = all)."""
    count = count or len(capacities or max_khz)
    for core in range(count):
        core_dir = root / f"cpu{core}"
        (core_dir / "topology").mkdir(parents=True)
        if capacities is not None:
            (core_dir / "cpu_capacity").write_text(f"{capacities[core]}\n")
        if max_khz is not None:
            (core_dir / "cpufreq").mkdir()
            (core_dir / "cpufreq" / "cpuinfo_max_freq").write_text(f"{max_khz[core]}\n")
    (root / "cpufreq").mkdir()
    (root / "possible").write_text(f"0-{count - 1}\n")
    if online is not None:
        (root / "online").write_text((online or f"0-{count - 1}") + "\n")
    return root


def write_cpuinfo(tmp_path: Path, text: str) -> Path:
    """A file of its own for each text: the answer for a path is cached, as /proc/cpuinfo does not change."""
    path = tmp_path / f"cpuinfo-{len(list(tmp_path.glob('cpuinfo-*')))}"
    path.write_text(text)
    return path


def test_snapdragon_8_gen_2_keeps_the_prime_and_big_cores(tmp_path):
    sysfs = make_sysfs(tmp_path, SNAPDRAGON_8_GEN_2_CAPACITY, SNAPDRAGON_8_GEN_2_MAX_KHZ)
    assert performance_cores(sysfs, allowed=set(range(8))) == [3, 4, 5, 6, 7]
    assert default_num_threads(sysfs, allowed=set(range(8))) == 5


def test_snapdragon_865_one_prime_three_big_four_little(tmp_path):
    sysfs = make_sysfs(tmp_path, SNAPDRAGON_865_CAPACITY, SNAPDRAGON_865_MAX_KHZ)
    assert performance_cores(sysfs, allowed=set(range(8))) == [4, 5, 6, 7]


def test_top_clocks_decide_without_capacities(tmp_path):
    sysfs = make_sysfs(tmp_path, max_khz=SNAPDRAGON_865_MAX_KHZ)
    assert performance_cores(sysfs, allowed=set(range(8))) == [4, 5, 6, 7]


def test_top_clocks_decide_when_every_capacity_is_the_same(tmp_path):
    # A device tree without capacity-dmips-mhz: the kernel gives every core 1024.
    sysfs = make_sysfs(tmp_path, [1024] * 8, SNAPDRAGON_8_GEN_2_MAX_KHZ)
    assert performance_cores(sysfs, allowed=set(range(8))) == [3, 4, 5, 6, 7]


def test_little_clocks_near_the_big_ones_keep_every_core(tmp_path):
    # Helio G99: six A55 at 2.0 GHz and two A76 at 2.2 GHz cannot be told apart by clock alone.
    sysfs = make_sysfs(tmp_path, max_khz=[2000000] * 6 + [2200000] * 2)
    assert performance_cores(sysfs, allowed=set(range(8))) == list(range(8))


def test_offline_cores_are_left_out(tmp_path):
    sysfs = make_sysfs(tmp_path, SNAPDRAGON_865_CAPACITY, SNAPDRAGON_865_MAX_KHZ, online="0-4,6-7")
    assert performance_cores(sysfs, allowed=set(range(8))) == [4, 6, 7]


def test_per_core_online_files_when_there_is_no_online_list(tmp_path):
    sysfs = make_sysfs(tmp_path, SNAPDRAGON_865_CAPACITY, online=None)
    (sysfs / "cpu7" / "online").write_text("0\n")  # the prime core hot-unplugged (cpu0 has no such file)
    (sysfs / "cpu5" / "online").write_text("1\n")
    assert performance_cores(sysfs, allowed=set(range(8))) == [4, 5, 6]


def test_the_affinity_mask_narrows_the_cores(tmp_path):
    sysfs = make_sysfs(tmp_path, SNAPDRAGON_865_CAPACITY, SNAPDRAGON_865_MAX_KHZ)
    assert performance_cores(sysfs, allowed={0, 1, 2, 3, 4, 5}) == [4, 5]
    # Android's background cpuset: little cores only; they are all there is to train on.
    assert performance_cores(sysfs, allowed={0, 1, 2, 3}) == [0, 1, 2, 3]
    assert default_num_threads(sysfs, allowed={0, 1, 2, 3}) == 4


def test_uniform_x86_keeps_every_allowed_core(tmp_path):
    sysfs = make_sysfs(tmp_path, [1024] * 4, [3700000] * 4)
    assert performance_cores(sysfs, allowed={0, 1, 2, 3}) == [0, 1, 2, 3]
    assert performance_cores(sysfs, allowed={1, 3}) == [1, 3]


def test_no_readings_or_no_sysfs_keeps_every_allowed_core(tmp_path):
    bare = make_sysfs(tmp_path / "vm", max_khz=None, count=2)  # a VM without cpufreq or capacities
    assert performance_cores(bare, allowed={0, 1}) == [0, 1]
    assert performance_cores(tmp_path / "missing", allowed={2, 5}) == [2, 5]


def test_core_lists_round_trip():
    assert parse_core_list("0-3,5,7-8\n") == {0, 1, 2, 3, 5, 7, 8}
    assert parse_core_list("\n") == set()
    assert format_core_list([8, 0, 1, 2, 3, 5, 7]) == "0-3,5,7-8"
    assert format_core_list([]) == ""


def test_bfloat16_instructions_from_cpuinfo(tmp_path):
    assert has_fast_bfloat16(write_cpuinfo(tmp_path, X86_WITH_BF16))
    assert not has_fast_bfloat16(write_cpuinfo(tmp_path, X86_WITHOUT_BF16))
    assert has_fast_bfloat16(write_cpuinfo(tmp_path, ARM64_CORTEX_X3))
    assert not has_fast_bfloat16(write_cpuinfo(tmp_path, ARM64_CORTEX_A76))
    assert not has_fast_bfloat16(tmp_path / "no-such-file")


def test_this_machine():
    allowed = os.sched_getaffinity(0)
    cores = performance_cores()
    assert cores and set(cores) <= allowed
    assert 1 <= default_num_threads() == len(cores) <= len(allowed)
    assert isinstance(has_fast_bfloat16(), bool)
