"""Generate and export through the API: child processes use a finished job's adapter; the export loads in plain transformers."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from sqlalchemy import update
from transformers import AutoModelForCausalLM

from api.main import create_app
from jobs.stop import StopSignal
from jobs.worker import run_worker
from mftd.db import new_session
from mftd.protocol import ADAPTER_DIRNAME, EXIT_SUCCEEDED
from mftd.status import JobStatus
from mftd.tables import Job
from tests.jobs.helpers import chat_records, create_job, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture
def api(settings, engine):
    with TestClient(create_app(settings, engine), base_url="http://127.0.0.1") as client:
        client.headers["Authorization"] = f"Bearer {settings.token_path.read_text().strip()}"
        yield client


def _finished_job(settings, engine, model_path, dataset, **config) -> int:
    job_id = create_job(engine, model_path, dataset, max_steps=4, batch_size=2, grad_accum_steps=1, learning_rate=5e-2, **config)
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    with new_session(engine) as session:  # the daemon would set this after the worker's exit code
        session.exec(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED))
        session.commit()
    return job_id


def test_generate_and_export_of_a_lora_job(tmp_path, settings, engine, tiny_model, api):
    model_path = tiny_model("Qwen2ForCausalLM")
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(8))
    job_id = _finished_job(settings, engine, model_path, dataset, method="lora")

    answer = api.post(f"/v1/jobs/{job_id}/generate", json={"prompt": "apple banana", "max_new_tokens": 6, "compare": True})
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["text"], str) and isinstance(answer.json()["base_text"], str)

    exported = api.post(f"/v1/jobs/{job_id}/export")
    assert exported.status_code == 200, exported.text
    body = exported.json()
    assert body["merged"] and body["artifact"] == "export"
    assert "export" in [artifact["path"] for artifact in api.get(f"/v1/jobs/{job_id}/artifacts").json()]
    assert not [path.name for path in settings.job_dir(job_id).iterdir() if path.name.startswith(".export")]

    merged = AutoModelForCausalLM.from_pretrained(body["path"])
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path), settings.job_dir(job_id) / ADAPTER_DIRNAME)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(model_path)(ids).logits)


def test_a_full_fine_tune_exports_as_it_is_and_an_unfinished_job_is_refused(tmp_path, settings, engine, tiny_model, api):
    model_path = tiny_model("GPT2LMHeadModel")
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(8))
    job_id = _finished_job(settings, engine, model_path, dataset, method="full")
    body = api.post(f"/v1/jobs/{job_id}/export").json()
    assert body["merged"] is False and body["artifact"] == "model"
    assert api.post(f"/v1/jobs/{job_id}/generate", json={"prompt": "apple", "max_new_tokens": 3}).status_code == 200

    queued = create_job(engine, model_path, dataset, method="lora")
    refused = api.post(f"/v1/jobs/{queued}/generate", json={"prompt": "apple"})
    assert refused.status_code == 409 and "queued" in refused.text
