"""How small is the idle daemon? Starts ``mftd serve`` on a free port with a fresh data dir,
leaves it idle, and prints its RSS and CPU use, and whether torch got loaded.

    python benchmarks/daemon_idle.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.e2e.daemon_process import DaemonProcess  # noqa: E402

RSS_TARGET_MB = 150


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="How long to leave it idle (default 60).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        daemon = DaemonProcess(data_dir, extra_env={"MFTD_TICK_SECONDS": "2"}).start()
        try:
            process = psutil.Process(daemon.process.pid)
            cpu_start = sum(process.cpu_times()[:2])
            time.sleep(args.seconds)
            cpu_used = sum(process.cpu_times()[:2]) - cpu_start
            rss_mb = process.memory_info().rss / 2**20
            torch_loaded = "libtorch" in Path(f"/proc/{process.pid}/maps").read_text()
        finally:
            daemon.stop()
    print(f"{'idle seconds':<22}{args.seconds:>10.0f}")
    print(f"{'RSS (MB)':<22}{rss_mb:>10.1f}   target < {RSS_TARGET_MB}")
    print(f"{'CPU used (s)':<22}{cpu_used:>10.2f}   ({100 * cpu_used / args.seconds:.2f}% of one core)")
    print(f"{'torch loaded':<22}{str(torch_loaded):>10}")
    return 0 if rss_mb < RSS_TARGET_MB and not torch_loaded else 1


if __name__ == "__main__":
    sys.exit(main())
