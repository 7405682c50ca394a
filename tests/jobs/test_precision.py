"""Whether bfloat16 matmuls are fast: this machine's CPU and torch build, and a CPU without the instructions."""

from __future__ import annotations

from jobs.precision import bfloat16_matmul_problem, bfloat16_matmul_supported
from mftd.cpu import has_fast_bfloat16

# Skylake-SP: AVX-512 without its BF16 extension.
CPUINFO_WITHOUT_BF16 = """\
processor	: 0
model name	: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx lm avx f16c avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl
"""


def test_this_machine_agrees_with_its_cpu_flags():
    # torch's wheels for x86 and aarch64 Linux ship oneDNN, so the CPU's instructions decide.
    assert bfloat16_matmul_supported() == has_fast_bfloat16()


def test_a_cpu_without_bfloat16_instructions_falls_back_with_a_reason(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO_WITHOUT_BF16)
    assert not bfloat16_matmul_supported(cpuinfo)
    assert "no bfloat16 matrix instructions" in bfloat16_matmul_problem(cpuinfo)
