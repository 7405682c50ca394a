"""A real training worker killed by SIGKILL (as Android's phantom process killer or the OOM killer would): interrupted, retried with backoff, then failed with advice."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.e2e.daemon_process import DaemonProcess, wait_for_status

pytestmark = pytest.mark.slow


def wait_for_worker(daemon_pid: int, job_id: int, not_pid: int | None = None, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(daemon_pid).children():
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            if "jobs.worker" in argv and str(job_id) in argv and child.pid != not_pid:
                return child
        time.sleep(0.05)
    raise AssertionError("no worker process appeared")


def test_a_worker_killed_again_and_again_fails_the_job_with_what_to_try(tmp_path, tiny_qwen2, chat_jsonl):
    (tmp_path / "data").mkdir()
    daemon = DaemonProcess(tmp_path / "data", extra_env={"MFTD_MAX_INTERRUPTIONS": "1"}).start()
    try:
        with daemon.client() as client:
            assert client.post("/v1/models", json={"name": "tiny", "path": str(tiny_qwen2)}).status_code == 201
            with chat_jsonl.open("rb") as f:
                assert client.post("/v1/datasets", data={"name": "chat"}, files={"file": ("chat.jsonl", f)}).status_code == 201
            job_id = client.post("/v1/jobs", json={"model": "tiny", "dataset": "chat", "max_steps": 50}).json()["id"]

            first = wait_for_worker(daemon.process.pid, job_id)
            first.send_signal(signal.SIGKILL)  # still importing torch: no progress
            job = wait_for_status(client, job_id, {"interrupted"}, timeout=30)
            assert job["status_reason"].startswith("killed by SIGKILL — possibly the out-of-memory killer or Android's phantom process killer")
            assert job["interruptions"] == 1 and job["not_before"] is not None

            second = wait_for_worker(daemon.process.pid, job_id, not_pid=first.pid)  # restarted after the backoff
            second.send_signal(signal.SIGKILL)
            job = wait_for_status(client, job_id, {"failed"}, timeout=30)
        reason = job["status_reason"]
        assert reason.startswith("the worker was interrupted 2 times in a row without making progress (limit 1).")
        assert "The last time: killed by SIGKILL" in reason
        assert "max_phantom_processes" in reason and "max_seq_len" in reason
    finally:
        daemon.stop()
