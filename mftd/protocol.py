"""The contract between the daemon and a training worker (``python -m jobs.worker``).

The worker reads its job from SQLite, writes heartbeats, metrics, events and checkpoints back,
and tells how it ended through its exit code. The daemon alone maps that ending to a job status
(``mftd.supervisor``).
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1          # an error in the run; the newest ``error`` event says what
EXIT_STOPPED = 75        # stopped on request (SIGTERM) after writing a checkpoint
EXIT_BAD_CONFIG = 78     # the job cannot run as configured; retrying will not help

WORKER_MODULE = "jobs.worker"

# glibc allocator settings for workers (the user's environment wins). Up to eight arenas per core
# keep freed memory that a phone cannot spare: two are enough for a few threads. Tensors of 1 MB
# and more get their own mapping, given back at free: with glibc's sliding default (up to 32 MB)
# they land on the heap, where fragmentation held about 500 MB more at SmolLM2's LoRA peak
# (1,216 against 1,738 MB, micro-batch 4 x 256 tokens, checkpointed) at the same speed there. It is not
# free everywhere: a bfloat16-base LoRA run without checkpointing (4 packed rows of 256 tokens) peaked at
# 1,726 MB against 2,253 but trained at 251 tokens/s against 372, each large tensor now mapped and faulted
# in afresh (a 16 MB threshold: 2,033 MB at 373 tokens/s). Memory first by default; a daemon started with
# its own MALLOC_MMAP_THRESHOLD_ passes that on instead (the planner's constants assume this one).
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}

HEARTBEAT_SECONDS = 5.0

ADAPTER_DIRNAME = "adapter"
FULL_MODEL_DIRNAME = "model"
CHECKPOINTS_DIRNAME = "checkpoints"
RESOLVED_CONFIG_FILENAME = "config.json"
WORKER_LOG_FILENAME = "worker.log"


def worker_command(job_id: int, data_dir: Path, python: str = "") -> list[str]:
    """The command line that runs the training worker for ``job_id``."""
    return [python or sys.executable, "-m", WORKER_MODULE, str(job_id), "--data-dir", str(data_dir)]
