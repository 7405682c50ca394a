"""The contract between the daemon and a training worker (``python -m jobs.worker``).

The worker reads its job from SQLite, writes heartbeats, metrics, events and checkpoints back,
and tells how it ended through its exit code. The daemon alone maps that ending to a job status
(``mftd.supervisor``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1          # an error in the run; the newest ``error`` event says what
EXIT_STOPPED = 75        # stopped on request (SIGTERM) after writing a checkpoint
EXIT_BAD_CONFIG = 78     # the job cannot run as configured; retrying will not help

WORKER_MODULE = "jobs.worker"

# glibc allocator settings a worker starts with (the user's environment wins). Arenas: at most eight,
# not glibc's eight per core. A worker has a thread per compute core plus about four more (heartbeat,
# stop watchers, the tokenizer's pool); with fewer arenas than that, compute threads share one and
# wait on its lock at every tensor they allocate. Two arenas cost 11-16% of the chat benchmark's
# tokens/s against eight (SmolLM2 LoRA, 2 threads, alternated runs of 30 steps: 279 against 323 and
# 256 against 284), and eight held at most 52 MB more at the peak (benchmarks/allocator_slack.py:
# 1,856 against 1,803 MB; checkpointed and micro-batch 1 within 25 MB). Tensors of 1 MB
# and more get their own mapping, given back at free: with glibc's sliding default (up to 32 MB)
# they land on the heap, where fragmentation held about 500 MB more at SmolLM2's LoRA peak
# (1,216 against 1,738 MB, micro-batch 4 x 256 tokens, checkpointed). That lean setting costs speed:
# a bfloat16-base LoRA run without checkpointing (4 packed rows of 256 tokens) peaked at 1,726 MB
# against 2,253 but trained at 251 tokens/s against 372, each large tensor mapped and faulted in
# afresh (a 16 MB threshold: 2,033 MB at 373 tokens/s). So the worker starts lean (tokenizing and
# planning), and the memory plan then picks the threshold (``mftd.memory_plan``, ``MemoryPlan.allocator``):
# "fast" when the budget has room for the heap slack a 16 MB threshold keeps, "lean" otherwise; the
# worker sets it with mallopt (``jobs.allocator``). A MALLOC_MMAP_THRESHOLD_ of the user's own wins.
# mmap thresholds of the plan's allocator settings, in bytes.
MMAP_THRESHOLDS = {"lean": 1 << 20, "fast": 16 << 20}
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "8", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLDS["lean"])}
# Names of WORKER_MALLOC_ENV that the daemon set itself (comma-separated), so that the worker can
# tell its defaults from the user's own settings, which it leaves alone.
MALLOC_DEFAULTS_ENV = "MFTD_MALLOC_DEFAULTS"


def worker_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` with WORKER_MALLOC_ENV's settings where it has none, and MALLOC_DEFAULTS_ENV naming them."""
    result = dict(environment)
    defaulted = [name for name in WORKER_MALLOC_ENV if name not in environment]
    result.update({name: WORKER_MALLOC_ENV[name] for name in defaulted})
    result[MALLOC_DEFAULTS_ENV] = ",".join(defaulted)
    return result

HEARTBEAT_SECONDS = 5.0

ADAPTER_DIRNAME = "adapter"
FULL_MODEL_DIRNAME = "model"
CHECKPOINTS_DIRNAME = "checkpoints"
RESOLVED_CONFIG_FILENAME = "config.json"
WORKER_LOG_FILENAME = "worker.log"


def worker_command(job_id: int, data_dir: Path, python: str = "") -> list[str]:
    """The command line that runs the training worker for ``job_id``."""
    return [python or sys.executable, "-m", WORKER_MODULE, str(job_id), "--data-dir", str(data_dir)]


MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def is_user_setting(name: str, environment: Mapping[str, str]) -> bool:
    """Whether ``name`` is set in ``environment`` by the user, not as one of the daemon's defaults."""
    return name in environment and name not in environment.get(MALLOC_DEFAULTS_ENV, "").split(",")


def users_allocator(environment: Mapping[str, str] = os.environ) -> Optional[str]:
    """The allocator setting a user's own MALLOC_MMAP_THRESHOLD_ amounts to ("fast" from 16 MB up, else "lean"); None when they set none.

    The plan then counts what that setting keeps instead of choosing one it could not apply.
    """
    if not is_user_setting(MMAP_THRESHOLD_ENV, environment):
        return None
    try:
        threshold = int(environment[MMAP_THRESHOLD_ENV])
    except ValueError:
        return None  # glibc ignores a value it cannot read
    return "fast" if threshold >= MMAP_THRESHOLDS["fast"] else "lean"
