"""GGUF import through the API: the daemon converts in a child process and the model row shows how it went."""

from __future__ import annotations

import time

from tests.jobs.test_gguf_import import write_gguf


def _wait_until_settled(client, auth, model_id: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = client.get(f"/v1/models/{model_id}", headers=auth).json()
        if model["status"] != "importing":
            return model
        time.sleep(0.2)
    raise AssertionError(f"model {model_id} still importing after {timeout} s")


def test_a_gguf_of_an_unsupported_architecture_fails_and_leaves_nothing(client, auth, settings, tmp_path):
    source = write_gguf(tmp_path / "mamba.gguf", "mamba")
    response = client.post("/v1/models/import", json={"name": "snake", "path": str(source)}, headers=auth)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "importing"

    model = _wait_until_settled(client, auth, response.json()["id"])
    assert model["status"] == "failed"
    assert "'mamba' is not supported" in model["status_message"] and "LlamaForCausalLM" in model["status_message"]
    assert not (settings.models_dir / "snake").exists()
    assert [path.name for path in settings.models_dir.iterdir()] == []


def test_a_job_on_a_model_that_is_not_ready_is_refused(client, auth, dataset_id, tmp_path):
    source = write_gguf(tmp_path / "mamba.gguf", "mamba")
    model_id = client.post("/v1/models", json={"name": "snake", "path": str(source)}, headers=auth).json()["id"]
    response = client.post("/v1/jobs", json={"model": "snake", "dataset": dataset_id}, headers=auth)
    assert response.status_code == 422, response.text
    assert "snake" in response.text
    _wait_until_settled(client, auth, model_id)


def test_a_path_that_is_not_a_gguf_file_is_refused_at_once(client, auth, tmp_path):
    response = client.post("/v1/models/import", json={"name": "nothing", "path": str(tmp_path / "missing.gguf")}, headers=auth)
    assert response.status_code == 422, response.text
    assert "not an existing .gguf file" in response.text
    assert client.get("/v1/models", headers=auth).json()["count"] == 0
