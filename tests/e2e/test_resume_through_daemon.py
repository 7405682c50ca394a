"""Exact resume through the real daemon: a job stopped three ways ends bit for bit where an uninterrupted one ends.

For each architecture and method, one daemon trains the same job twice: once straight through, and
once interrupted by (1) a pause (SIGTERM) in the middle of a gradient accumulation, (2) a pause right
after a checkpoint was written, and (3) a SIGKILL of the worker between checkpoints, which the daemon
sees as an interruption and resumes by itself. The final trainable weights must be bitwise equal and
the logged training losses identical.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.e2e.daemon_process import DaemonProcess, wait_for_status, wait_until
from tests.jobs.helpers import assert_same_tensors, chat_records, write_jsonl
from tests.jobs.tiny_models import build_tiny_model

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 6
# Many micro-batches per step, so that a pause at a random moment almost surely lands inside an accumulation.
CONFIG = dict(
    batch_size=2, grad_accum_steps=8, max_steps=40, checkpoint_every_steps=CHECKPOINT_EVERY, keep_checkpoints=2,
    learning_rate=5e-3, warmup_steps=3, lr_schedule="cosine", weight_decay=0.01, seed=11, num_threads=1, max_seq_len=64,
)
STEP_POLL_SECONDS = 0.05


def _job(client, job_id: int) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def _running_at_step(client, job_id: int, minimum: int) -> int:
    def reached():
        job = _job(client, job_id)
        assert job["status"] not in {"succeeded", "failed", "cancelled"}, f"job ended before step {minimum}: {job}"
        return job["status"] == "running" and job["step"] >= minimum and job["step"]

    return wait_until(reached, 180.0, f"job {job_id} running at step {minimum}", STEP_POLL_SECONDS)


def _checkpoint_steps(client, job_id: int) -> list[int]:
    events = client.get(f"/v1/jobs/{job_id}/events").json()
    return [int(m.group(1)) for e in events if (m := re.match(r"checkpoint saved at step (\d+)", e["message"]))]


def _pause_and_resume(client, job_id: int) -> None:
    assert client.post(f"/v1/jobs/{job_id}/pause").status_code == 200
    wait_for_status(client, job_id, {"paused"}, timeout=120)
    assert client.post(f"/v1/jobs/{job_id}/resume").status_code == 200


def _worker_pid(data_dir: Path, job_id: int) -> int:
    with sqlite3.connect(data_dir / "mftd.db") as connection:
        [pid] = connection.execute("SELECT worker_pid FROM job WHERE id = ?", (job_id,)).fetchone()
    return pid


def _final_weights(data_dir: Path, job_id: int, method: str) -> dict:
    folder = data_dir / "jobs" / str(job_id) / ("model" if method == "full" else "adapter")
    [weights_file] = folder.glob("*.safetensors")
    return load_file(weights_file)


def _train_losses(client, job_id: int) -> list[tuple[int, float]]:
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"split": "train"}).json()
    return [(m["step"], m["loss"]) for m in metrics]


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("architecture", ["GPT2LMHeadModel", "Gemma3ForCausalLM", "Qwen2ForCausalLM"])
def test_stopped_three_ways_through_the_daemon_equals_an_uninterrupted_run(tmp_path, architecture, method):
    model_dir = build_tiny_model(tmp_path / "model", architecture)
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(24))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    daemon = DaemonProcess(data_dir).start()
    try:
        with daemon.client() as client:
            assert client.post("/v1/models", json={"name": "tiny", "path": str(model_dir)}).status_code == 201
            assert client.post("/v1/datasets", data={"name": "chat", "path": str(dataset)}).status_code == 201
            body = {"model": "tiny", "dataset": "chat", "method": method, **CONFIG}
            straight = client.post("/v1/jobs", json={**body, "priority": 1}).json()["id"]
            interrupted = client.post("/v1/jobs", json=body).json()["id"]
            wait_for_status(client, straight, {"succeeded"}, timeout=300)

            # 1. SIGTERM (through pause) at a random moment: with 8 micro-batches per step, mid-accumulation.
            _running_at_step(client, interrupted, 2)
            _pause_and_resume(client, interrupted)

            # 2. SIGTERM right after a checkpoint was written.
            stopped_at = _job(client, interrupted)["step"]
            wait_until(lambda: any(step > stopped_at for step in _checkpoint_steps(client, interrupted)), 180.0, "a new checkpoint", STEP_POLL_SECONDS)
            _pause_and_resume(client, interrupted)

            # 3. SIGKILL between checkpoints: the daemon finds the worker dead and resumes the job by itself.
            step = _running_at_step(client, interrupted, _job(client, interrupted)["step"] + 2)
            wait_until(lambda: _job(client, interrupted)["step"] % CHECKPOINT_EVERY not in (0, CHECKPOINT_EVERY - 1), 180.0, "a step between checkpoints", STEP_POLL_SECONDS)
            os.kill(_worker_pid(data_dir, interrupted), signal.SIGKILL)
            job = wait_for_status(client, interrupted, {"succeeded"}, timeout=300)
            assert job["step"] == CONFIG["max_steps"]

            messages = [event["message"] for event in client.get(f"/v1/jobs/{interrupted}/events").json()]
            assert sum("resumed from step" in message for message in messages) == 3, messages
            assert any("interrupted" in message for message in messages), messages
            assert _train_losses(client, interrupted) == _train_losses(client, straight)
            assert [s for s, _ in _train_losses(client, straight)] == list(range(1, CONFIG["max_steps"] + 1))
        assert_same_tensors(_final_weights(data_dir, straight, method), _final_weights(data_dir, interrupted, method))
    finally:
        daemon.stop()
