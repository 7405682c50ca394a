"""The device policy end to end: a real daemon reads a scripted sensors file while a real worker trains.

Unplugged at 10% -> the job stops after its micro-batch and waits with that reason; plugged in again ->
after the settle period it resumes and succeeds, with the same weights, bit for bit, as a run that was
never stopped (the thermal throttle's pauses on the way change nothing either).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.daemon_process import DaemonProcess, wait_for_status, wait_until

pytestmark = pytest.mark.slow

TICK_SECONDS = 0.5
SETTLE_SECONDS = 3.0
JOB = {"method": "lora", "batch_size": 2, "grad_accum_steps": 2, "max_steps": 80, "learning_rate": 1e-2,
       "checkpoint_every_steps": 1000, "seed": 3}


def write_sensors(path: Path, **values) -> float:
    """Write the sensors file atomically, as a demo script would; returns when."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(values))
    os.replace(temporary, path)
    return time.monotonic()


def submit(client, model_dir: Path, dataset: Path) -> int:
    assert client.post("/v1/models", json={"name": "tiny", "path": str(model_dir)}).status_code == 201
    with dataset.open("rb") as f:
        assert client.post("/v1/datasets", data={"name": "chat"}, files={"file": ("chat.jsonl", f)}).status_code == 201
    response = client.post("/v1/jobs", json={"model": "tiny", "dataset": "chat", **JOB})
    assert response.status_code == 201, response.text
    return response.json()["id"]



def events(client, job_id: int) -> list[dict]:
    body = client.get(f"/v1/jobs/{job_id}/events").json()
    return body["data"] if isinstance(body, dict) else body


def adapter_tensors(data_dir: Path, job_id: int) -> dict[str, torch.Tensor]:
    return load_file(data_dir / "jobs" / str(job_id) / "adapter" / "adapter_model.safetensors")


def test_unplugged_at_10_percent_waits_then_resumes_bit_exact(tmp_path, tiny_qwen2, chat_jsonl):
    sensors = tmp_path / "sensors.json"
    write_sensors(sensors, charging=True, battery_percent=80, battery_temp_c=30.0)
    env = {"MFTD_SENSORS_FILE": str(sensors), "MFTD_SETTLE_SECONDS": str(SETTLE_SECONDS), "MFTD_TICK_SECONDS": str(TICK_SECONDS)}
    (tmp_path / "data").mkdir()
    daemon = DaemonProcess(tmp_path / "data", extra_env=env).start()
    try:
        with daemon.client() as client:
            job_id = submit(client, tiny_qwen2, chat_jsonl)
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["step"] >= 3, 120, "step 3")

            # Warm: past the 38 °C soft limit, the worker pauses between steps but keeps training.
            write_sensors(sensors, charging=True, battery_percent=80, battery_temp_c=40.0)
            wait_until(lambda: any(e["kind"] == "throttle" for e in events(client, job_id)), 10, "the throttle event")
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

            written = write_sensors(sensors, charging=False, battery_percent=10, battery_temp_c=30.0)
            job = wait_for_status(client, job_id, {"waiting"}, timeout=30)
            waited = time.monotonic() - written
            step_at_stop = job["step"]
            assert job["status_reason"] == "battery 10% is below 30% and not charging"
            assert step_at_stop < JOB["max_steps"]
            # two ticks, one micro-batch, the stop checkpoint and the worker's exit (with slack for a busy CI box)
            assert waited < 2 * TICK_SECONDS + 8, waited
            device = client.get("/v1/device").json()
            [verdict] = [entry for entry in device["jobs"] if entry["job_id"] == job_id]
            assert verdict["allowed"] is False and verdict["status"] == "waiting"
            assert verdict["reasons"] == ["battery 10% is below 35% (30% plus a 5% margin to resume) and not charging"]
            assert any(r["name"] == "battery_percent" and r["value"] == 10 and r["source"].startswith("sensors file") for r in device["readings"])
            time.sleep(2 * TICK_SECONDS)
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "waiting"

            plugged = write_sensors(sensors, charging=True, battery_percent=12, battery_temp_c=30.0)
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 30, "the resume")
            assert time.monotonic() - plugged >= SETTLE_SECONDS
            job = wait_for_status(client, job_id, {"succeeded"}, timeout=180)
            assert job["step"] == JOB["max_steps"]
            messages = [event["message"] for event in events(client, job_id)]
        assert f"resumed from step {step_at_stop}" in messages, messages
        assert any(message.startswith("slowing down: battery 40 °C") for message in messages), messages
        assert "running -> waiting: battery 10% is below 30% and not charging" in messages, messages
    finally:
        daemon.stop()
    interrupted = adapter_tensors(tmp_path / "data", job_id)

    (tmp_path / "plain").mkdir()
    plain_sensors = tmp_path / "plain-sensors.json"
    write_sensors(plain_sensors, charging=True, battery_percent=80, battery_temp_c=30.0)
    reference = DaemonProcess(tmp_path / "plain", extra_env={"MFTD_SENSORS_FILE": str(plain_sensors)}).start()
    try:
        with reference.client() as client:
            reference_id = submit(client, tiny_qwen2, chat_jsonl)
            wait_for_status(client, reference_id, {"succeeded"}, timeout=180)
            assert not any(event["kind"] in ("stop", "throttle") for event in events(client, reference_id))
    finally:
        reference.stop()
    uninterrupted = adapter_tensors(tmp_path / "plain", reference_id)
    assert uninterrupted.keys() == interrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(tensor, interrupted[name]), name
