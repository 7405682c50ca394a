"""The worker as the daemon runs it: ``python -m jobs.worker`` in its own process, stopped by real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from jobs.checkpoint import checkpoint_folders, verify_checkpoint
from jobs.stop import StopSignal
from jobs.worker import run_worker
from mftd.protocol import ADAPTER_DIRNAME, CHECKPOINTS_DIRNAME, EXIT_STOPPED, EXIT_SUCCEEDED, worker_command
from tests.jobs.helpers import (
    assert_same_tensors,
    chat_records,
    checkpoint_rows,
    create_job,
    final_weights,
    job_events,
    job_row,
    train_metrics,
    write_jsonl,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STEPS = 120
CONFIG = dict(max_steps=STEPS, batch_size=2, grad_accum_steps=2, checkpoint_every_steps=1000, num_threads=1, learning_rate=1e-3)

# Starts the worker as its child, then waits to be killed: a stand-in for the daemon.
FAKE_DAEMON = """
import subprocess, sys, time
with open(sys.argv[1], "ab") as log:
    worker = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
print(worker.pid, flush=True)
time.sleep(600)
"""


def worker_environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))


def start_worker(settings, job_id: int, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            worker_command(job_id, settings.data_dir), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=worker_environment()
        )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_75_then_a_new_worker_finishes(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(20)), **CONFIG)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, job_id, log_path)
    try:
        wait_until(lambda: job_row(engine, job_id).step >= 3, "the worker has trained 3 steps")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == EXIT_STOPPED, log_path.read_text()
    finally:
        worker.kill()
    stopped_at = job_row(engine, job_id).step
    assert 3 <= stopped_at < STEPS
    [checkpoint] = checkpoint_folders(settings.job_dir(job_id) / CHECKPOINTS_DIRNAME)
    assert checkpoint.name == f"step-{stopped_at:08d}"
    verify_checkpoint(checkpoint)
    assert [row.step for row in checkpoint_rows(engine, job_id)] == [stopped_at]
    assert any(event.message == f"stopped at step {stopped_at} of {STEPS} (SIGTERM)" for event in job_events(engine, job_id))
    assert job_row(engine, job_id).heartbeat_at is not None
    assert "loading model" in log_path.read_text()  # events are log lines too

    assert start_worker(settings, job_id, log_path).wait(timeout=300) == EXIT_SUCCEEDED, log_path.read_text()
    assert (settings.job_dir(job_id) / ADAPTER_DIRNAME / "adapter_model.safetensors").is_file()
    assert [step for step, *_ in train_metrics(engine, job_id)] == list(range(1, STEPS + 1))
    assert any(event.message == f"resumed from step {stopped_at}" for event in job_events(engine, job_id))

    # Bit-exact across processes too: the same job run straight through, here in the test process.
    straight = create_job(engine, tiny_model(), tmp_path / "chat.jsonl", **CONFIG)
    assert run_worker(straight, settings, StopSignal()) == EXIT_SUCCEEDED
    assert_same_tensors(final_weights(settings, straight), final_weights(settings, job_id))
    assert train_metrics(engine, straight) == train_metrics(engine, job_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_worker_checkpoints_and_stops_when_the_daemon_dies(tmp_path, settings, engine, tiny_model):
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "chat.jsonl", chat_records(20)), **CONFIG)
    fake_daemon = subprocess.Popen(
        [sys.executable, "-c", FAKE_DAEMON, str(tmp_path / "worker.log"), *worker_command(job_id, settings.data_dir)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True, env=worker_environment(),
    )
    worker_pid = int(fake_daemon.stdout.readline())
    try:
        wait_until(lambda: job_row(engine, job_id).step >= 2, "the worker has trained 2 steps")
        fake_daemon.kill()
        fake_daemon.wait()
        wait_until(
            lambda: any(event.message.startswith("stopped at step") for event in job_events(engine, job_id)),
            "the orphaned worker has stopped",
            timeout=120,
        )
    finally:
        fake_daemon.kill()
        try:
            os.kill(worker_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    stopped_at = job_row(engine, job_id).step
    assert stopped_at < STEPS
    assert [folder.name for folder in checkpoint_folders(settings.job_dir(job_id) / CHECKPOINTS_DIRNAME)] == [f"step-{stopped_at:08d}"]
