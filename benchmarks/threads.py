"""Matmul speed at every thread count, pinned to the performance cores (and to all cores when they differ).

    python benchmarks/threads.py [--sizes 1024,2048] [--repeats 5]

Prints a markdown table of GFLOP/s (float32 and bfloat16 square ``torch.mm``, best of
``--repeats`` rounds) for 1 to as many threads as the process has cores, and whether the thread
count the worker uses by default (``mftd.cpu.default_num_threads``) is the measured best. Other
work on the machine lowers the numbers, most of all at the higher thread counts; the load average
is printed with them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jobs.precision import bfloat16_matmul_problem  # noqa: E402
from mftd.cpu import allowed_cores, default_num_threads, format_core_list, performance_cores, pin_to_cores  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Within this share of the best, a difference is timing noise, not a worse choice.
NOISE = 0.05


class MatmulCase:
    """One column of the table: a ``size``-square matmul in ``dtype``, repeated ``calls`` times per timing."""

    def __init__(self, name: str, size: int, min_seconds: float):
        self.name, self.size = name, size
        generator = torch.Generator().manual_seed(0)
        self.left = torch.randn(size, size, generator=generator).to(DTYPES[name])
        self.right = torch.randn(size, size, generator=generator).to(DTYPES[name])
        self.out = torch.empty(size, size, dtype=DTYPES[name])
        self.multiply()  # the first call picks and caches the kernel
        self.calls = max(1, math.ceil(min_seconds / self.seconds_per_call(calls=1)))

    def multiply(self) -> None:
        torch.mm(self.left, self.right, out=self.out)

    def seconds_per_call(self, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            self.multiply()
        return max((time.perf_counter() - start) / calls, 1e-9)

    def gflops(self, seconds_per_call: float) -> float:
        return 2 * self.size**3 / seconds_per_call / 1e9


def measure(placements: list[tuple[str, list[int]]], max_threads: int, cases: list[MatmulCase], repeats: int) -> dict[tuple[str, int], list[float]]:
    """Best seconds per call of every case at every placement and thread count.

    The rounds go over all of them in turn, so that a change in the machine's load while it runs
    touches every cell alike instead of the last ones.
    """
    best: dict[tuple[str, int], list[float]] = {}
    for _ in range(repeats):
        for placement, cores in placements:
            pin_to_cores(cores)
            for threads in range(1, max_threads + 1):
                torch.set_num_threads(threads)
                cases[0].multiply()  # wakes this many pool threads before the timings
                seconds = [case.seconds_per_call(case.calls) for case in cases]
                previous = best.get((placement, threads), [math.inf] * len(cases))
                best[(placement, threads)] = [min(old, new) for old, new in zip(previous, seconds)]
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048", help="Square matrix sizes, comma-separated (default 1024,2048).")
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16, comma-separated (default both).")
    parser.add_argument("--repeats", type=int, default=5, help="Timings per cell; the best counts (default 5).")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="Shortest single-thread timing; small matmuls are repeated to reach it.")
    args = parser.parse_args()

    allowed = sorted(allowed_cores())
    performance = performance_cores(allowed=set(allowed))
    default = default_num_threads(allowed=set(allowed))
    placements = [("performance", performance)] + ([("all", allowed)] if allowed != performance else [])
    print(f"torch {torch.__version__}, {platform.machine()}, {_cpu_model()}")
    print(f"allowed cores {format_core_list(allowed)}; performance cores {format_core_list(performance)}; "
          f"bfloat16 matmuls: {bfloat16_matmul_problem() or 'fast (CPU instructions and oneDNN)'}")
    print(f"load average before: {_load_average()}")
    pin_to_cores(performance)
    torch.set_num_threads(1)
    cases = [MatmulCase(name, int(size), args.min_seconds) for name in args.dtypes.split(",") for size in args.sizes.split(",")]
    best = measure(placements, len(allowed), cases, args.repeats)
    results = {key: [case.gflops(seconds) for case, seconds in zip(cases, row)] for key, row in best.items()}
    print(f"load average after: {_load_average()}")
    print()
    print("| cores | threads | " + " | ".join(f"{case.name} {case.size} GFLOP/s" for case in cases) + " |")
    print("|---|---|" + "---|" * len(cases))
    for (placement, threads), row in results.items():
        cores = dict(placements)[placement]
        print(f"| {format_core_list(cores)} ({placement}) | {threads} | " + " | ".join(f"{value:.1f}" for value in row) + " |")
    print()
    print(f"default_num_threads() picks {default} thread(s), on the performance cores {format_core_list(performance)}.")
    for index, case in enumerate(cases):
        (placement, threads), top = max(((key, row[index]) for key, row in results.items()), key=lambda item: item[1])
        chosen = results[("performance", default)][index]
        verdict = "agrees" if chosen >= (1 - NOISE) * top else "differs"
        print(f"- {case.name} {case.size}: best {top:.1f} GFLOP/s with {threads} thread(s) on the {placement} cores; "
              f"the default gets {chosen:.1f} ({chosen / top:.0%} of it): {verdict}")
    return 0


def _load_average() -> str:
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("model name", "hardware"):
                return value.strip()
    except OSError:
        pass
    return "CPU model unknown"


if __name__ == "__main__":
    sys.exit(main())
