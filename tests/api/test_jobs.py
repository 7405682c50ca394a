from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from mftd.db import new_session
from tests.api.hf_folders import write_model_folder
from mftd.settings import Settings
from mftd.status import JobStatus, set_status
from mftd.tables import Job


def move(engine: Engine, job_id: int, *statuses: JobStatus) -> None:
    """Walk a job through ``statuses`` the way the scheduler and supervisor would."""
    with new_session(engine) as session:
        job = session.get(Job, job_id)
        for status in statuses:
            set_status(session, job, status, "test")


def test_create_job(client: TestClient, auth: dict[str, str], model_id: int, dataset_id: int, changes: list[str]):
    body = {"model": model_id, "dataset": "sums", "name": "first", "priority": 2, "learning_rate": 1e-3, "method": "full"}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["model_id"] == model_id and job["dataset_id"] == dataset_id
    assert job["name"] == "first" and job["priority"] == 2
    assert job["config"]["learning_rate"] == 1e-3 and job["config"]["method"] == "full"
    assert job["config"]["lora_rank"] == 8  # defaults are filled in
    assert job["config"]["max_seq_len"] == 128  # the default 512 is capped at the model's context length
    assert job["step"] == 0 and job["progress"] is None
    assert job["created_at"].endswith("Z") and job["finished_at"] is None
    assert changes == ["change"]

    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json() == job
    assert client.get("/v1/jobs", headers=auth).json() == {"data": [job], "count": 1}
    assert client.get("/v1/jobs?status=queued", headers=auth).json()["count"] == 1
    assert client.get("/v1/jobs?status=running", headers=auth).json() == {"data": [], "count": 0}


def test_model_by_name(client: TestClient, auth: dict[str, str], model_id: int, dataset_id: int):
    response = client.post("/v1/jobs", json={"model": "tiny", "dataset": dataset_id}, headers=auth)
    assert response.status_code == 201
    assert response.json()["model_id"] == model_id


def test_unknown_model_id_is_404(client: TestClient, auth: dict[str, str], model_id: int, dataset_id: int):
    response = client.post("/v1/jobs", json={"model": 999, "dataset": dataset_id}, headers=auth)
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "model 999" in detail and "tiny" in detail  # says what was asked and what exists


def test_missing_dataset_is_404(client: TestClient, auth: dict[str, str], model_id: int):
    response = client.post("/v1/jobs", json={"model": model_id, "dataset": "nope"}, headers=auth)
    assert response.status_code == 404
    assert "'nope'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("learning_rate", -1.0), ("lora_rank", 0), ("method", "qlora"), ("bogus_field", 1), ("priority", 10_000)],
)
def test_bad_config_is_422_naming_the_field(client: TestClient, auth: dict[str, str], model_id: int, dataset_id: int, field: str, value):
    response = client.post("/v1/jobs", json={"model": model_id, "dataset": dataset_id, field: value}, headers=auth)
    assert response.status_code == 422
    assert field in [error["loc"][-1] for error in response.json()["detail"]]


def test_max_seq_len_above_context_length_is_422(client: TestClient, auth: dict[str, str], model_id: int, dataset_id: int):
    response = client.post("/v1/jobs", json={"model": model_id, "dataset": dataset_id, "max_seq_len": 4096}, headers=auth)
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "max_seq_len"]
    assert "128" in error["msg"]


def test_pause_resume_cancel_of_a_queued_job(client: TestClient, auth: dict[str, str], job_id: int, changes: list[str]):
    changes.clear()
    paused = client.post(f"/v1/jobs/{job_id}/pause", headers=auth)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    resumed = client.post(f"/v1/jobs/{job_id}/resume", headers=auth)
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert cancelled.status_code == 200
    job = cancelled.json()
    assert job["status"] == "cancelled" and job["finished_at"].endswith("Z")
    assert changes == ["change"] * 3


def test_pause_and_cancel_of_a_running_job_ask_the_worker_to_stop(client: TestClient, auth: dict[str, str], engine: Engine, job_id: int):
    move(engine, job_id, JobStatus.RUNNING)
    paused = client.post(f"/v1/jobs/{job_id}/pause", headers=auth).json()
    assert paused["status"] == "running" and paused["stop_request"] == "pause"
    assert client.post(f"/v1/jobs/{job_id}/pause", headers=auth).json()["stop_request"] == "pause"
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).json()
    assert cancelled["status"] == "running" and cancelled["stop_request"] == "cancel"
    assert client.post(f"/v1/jobs/{job_id}/pause", headers=auth).status_code == 409
    move(engine, job_id, JobStatus.CANCELLED)  # what the supervisor does once the worker exits
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "cancelled" and job["stop_request"] is None


def test_pause_of_a_finished_job_is_409(client: TestClient, auth: dict[str, str], engine: Engine, job_id: int):
    move(engine, job_id, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    response = client.post(f"/v1/jobs/{job_id}/pause", headers=auth)
    assert response.status_code == 409
    body = response.json()
    assert body["current"] == "succeeded" and body["requested"] == "paused" and body["allowed"] == []
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["progress"] == 1.0


def test_resume_of_a_queued_job_is_409(client: TestClient, auth: dict[str, str], job_id: int):
    response = client.post(f"/v1/jobs/{job_id}/resume", headers=auth)
    assert response.status_code == 409
    assert "queued" in response.json()["detail"]


def test_delete_job(client: TestClient, auth: dict[str, str], settings: Settings, engine: Engine, job_id: int):
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 409  # still queued
    job_dir = settings.job_dir(job_id)
    (job_dir / "adapter").mkdir(parents=True)
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert not job_dir.exists()
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 404


def test_bad_status_filter_is_422(client: TestClient, auth: dict[str, str]):
    response = client.get("/v1/jobs?status=sleeping", headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "status"]


@pytest.fixture
def sized_model_id(client: TestClient, auth: dict[str, str], tmp_path: Path) -> int:
    """A model whose config.json has the sizes the planner needs (SmolLM2-135M's)."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 8192, "hidden_size": 576,
              "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "vocab_size": 49152, "tie_word_embeddings": True}
    folder = write_model_folder(tmp_path / "smol-sized", config)
    response = client.post("/v1/models", json={"name": "smol-sized", "path": str(folder)}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_the_memory_plan_is_on_the_job_from_submit(client: TestClient, auth: dict[str, str], sized_model_id: int, dataset_id: int):
    body = {"model": sized_model_id, "dataset": dataset_id, "batch_size": 8, "grad_accum_steps": 1, "max_seq_len": 1024,
            "memory_budget_mb": 3000}
    job = client.post("/v1/jobs", json=body, headers=auth).json()
    plan = job["memory_plan"]
    assert plan["fits"] and plan["budget_mb"] == 3000 and plan["estimate_mb"] <= 3000 and plan["sequence"] == 1024
    assert plan["micro_batch"] * plan["grad_accum_steps"] == 8
    assert plan["micro_batch"] < 8 or plan["gradient_checkpointing"]  # eight 1024-token rows' activations do not fit 3 GB
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["memory_plan"] == plan


def test_a_job_that_cannot_fit_its_budget_is_422_with_the_estimate(client: TestClient, auth: dict[str, str], sized_model_id: int, dataset_id: int):
    body = {"model": sized_model_id, "dataset": dataset_id, "method": "full", "parameter_sharding": False, "max_seq_len": 2048,
            "memory_budget_mb": 600}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "memory_budget_mb"]
    assert "does not fit its memory budget" in error["msg"] and "raise memory_budget_mb to at least" in error["msg"]
    assert client.get("/v1/jobs", headers=auth).json()["count"] == 0
