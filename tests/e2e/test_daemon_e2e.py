"""The whole path through a real daemon process: register, upload, submit, train, download, load with peft."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.e2e.daemon_process import DaemonProcess, wait_for_status

pytestmark = pytest.mark.slow


def _register_and_submit(client, model_dir: Path, dataset: Path, **config) -> int:
    response = client.post("/v1/models", json={"name": "tiny", "path": str(model_dir)})
    assert response.status_code == 201, response.text
    with dataset.open("rb") as f:
        response = client.post("/v1/datasets", data={"name": "chat"}, files={"file": ("chat.jsonl", f, "application/jsonl")})
    assert response.status_code == 201, response.text
    body = {"model": "tiny", "dataset": "chat", "method": "lora", "batch_size": 2, "grad_accum_steps": 2, **config}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_lora_job_through_the_daemon_yields_an_adapter_peft_loads(daemon, tiny_qwen2, chat_jsonl, tmp_path):
    with daemon.client() as client:
        job_id = _register_and_submit(client, tiny_qwen2, chat_jsonl, max_steps=6, learning_rate=1e-2)
        job = wait_for_status(client, job_id, {"succeeded"}, timeout=240)
        assert job["step"] == 6

        metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
        train = [m for m in (metrics["data"] if isinstance(metrics, dict) else metrics) if m["split"] == "train"]
        assert [m["step"] for m in train] == list(range(1, 7))
        assert all(m["loss"] > 0 and m["tokens_per_second"] > 0 for m in train)

        archive = client.get(f"/v1/jobs/{job_id}/artifacts/adapter")
        assert archive.status_code == 200, archive.text
    adapter_dir = tmp_path / "downloaded-adapter"
    zipfile.ZipFile(io.BytesIO(archive.content)).extractall(adapter_dir)

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    tuned = PeftModel.from_pretrained(base, adapter_dir)
    lora_b = [p for name, p in tuned.named_parameters() if "lora_B" in name]
    assert lora_b, "the adapter has no LoRA weights"
    assert any(p.abs().sum() > 0 for p in lora_b), "LoRA B is still all zeros: nothing was trained"

    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_qwen2)(ids).logits
        adapted = tuned(ids).logits
    assert not torch.equal(plain, adapted)


def test_killed_daemon_restarts_and_the_job_still_succeeds(tmp_path, tiny_qwen2, chat_jsonl):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    daemon = DaemonProcess(data_dir).start()
    try:
        with daemon.client() as client:
            job_id = _register_and_submit(
                client, tiny_qwen2, chat_jsonl, max_steps=400, checkpoint_every_steps=10, learning_rate=1e-3
            )
            deadline = time.monotonic() + 240
            while client.get(f"/v1/jobs/{job_id}").json()["step"] < 12:
                assert time.monotonic() < deadline, "the job never reached step 12"
                time.sleep(0.2)
        daemon.kill()

        daemon = DaemonProcess(data_dir, port=daemon.port).start()
        with daemon.client() as client:
            job = wait_for_status(client, job_id, {"succeeded"}, timeout=400)
            assert job["step"] == 400
            messages = [event["message"] for event in _events(client, job_id)]
        assert any("interrupted" in message for message in messages), messages
        assert any("resumed from step" in message for message in messages), messages
    finally:
        daemon.stop()


def test_daemon_never_loads_torch(daemon, tiny_qwen2, chat_jsonl):
    with daemon.client() as client:
        job_id = _register_and_submit(client, tiny_qwen2, chat_jsonl, max_steps=2)
        wait_for_status(client, job_id, {"succeeded"}, timeout=240)
    maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    assert "libtorch" not in maps
    assert "libtorch" in _worker_maps_proof(), "the check would not see torch if it were loaded"


def _worker_maps_proof() -> str:
    """This test process imported torch: its own maps show what a loaded torch looks like."""
    return Path("/proc/self/maps").read_text()


def _events(client, job_id: int) -> list[dict]:
    body = client.get(f"/v1/jobs/{job_id}/events").json()
    return body["data"] if isinstance(body, dict) else body
