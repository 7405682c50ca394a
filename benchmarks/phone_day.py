"""Scheduling policies over a day-long phone trace: time to finish a 4-hour job, preemptions, battery used.

Replays ``tests/mftd/phone_trace.py``'s deterministic day (overnight charging, a commute, a desk
top-up, a hot afternoon, a hot car charger, an evening) through the daemon's real tick and
policy, once per simulated minute, with a stand-in worker, and prints a Markdown table.

    python benchmarks/phone_day.py [--steps 240] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.mftd.phone_trace import POLICIES, phone_day, replay, table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=240, help="The job's length in full-speed minutes (default 240).")
    parser.add_argument("--seed", type=int, default=7, help="The trace's seed (default 7).")
    args = parser.parse_args()
    trace = phone_day(args.seed)
    started = time.monotonic()
    outcomes = [replay(name, constraints, overrides, args.steps, trace) for name, (constraints, overrides) in POLICIES.items()]
    print(f"A {args.steps}-minute job submitted at 07:00 on a simulated day (seed {args.seed}); one tick a minute.\n")
    print(table(outcomes))
    print(f"\n{len(outcomes)} policies x {len(trace)} minutes in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
