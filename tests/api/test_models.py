import json
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.hf_folders import GPT2_NUM_PARAMETERS, write_model_folder


def test_register_model(client: TestClient, auth: dict[str, str], model_folder: Path):
    response = client.post("/v1/models", json={"name": "tiny", "path": str(model_folder)}, headers=auth)
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["architecture"] == "GPT2LMHeadModel"
    assert model["model_type"] == "gpt2"
    assert model["num_parameters"] == GPT2_NUM_PARAMETERS
    assert model["dtype"] == "float32"
    assert model["context_length"] == 128
    assert model["has_chat_template"] is True
    assert model["created_at"].endswith("Z")

    assert client.get(f"/v1/models/{model['id']}", headers=auth).json() == model
    listing = client.get("/v1/models", headers=auth).json()
    assert listing["count"] == 1 and listing["data"] == [model]


def test_duplicate_name_is_409(client: TestClient, auth: dict[str, str], model_id: int, model_folder: Path):
    response = client.post("/v1/models", json={"name": "tiny", "path": str(model_folder)}, headers=auth)
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


def test_unsupported_architecture_is_422_with_the_supported_list(client: TestClient, auth: dict[str, str], tmp_path: Path):
    folder = write_model_folder(tmp_path / "bert", {"architectures": ["BertForMaskedLM"], "model_type": "bert", "max_position_embeddings": 512})
    response = client.post("/v1/models", json={"name": "bert", "path": str(folder)}, headers=auth)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "BertForMaskedLM" in detail
    for architecture in ("GPT2LMHeadModel", "Gemma3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"):
        assert architecture in detail


def test_missing_folder_is_422(client: TestClient, auth: dict[str, str], tmp_path: Path):
    response = client.post("/v1/models", json={"name": "ghost", "path": str(tmp_path / "nowhere")}, headers=auth)
    assert response.status_code == 422
    assert "does not exist" in response.json()["detail"]


def test_bad_name_is_422_naming_the_field(client: TestClient, auth: dict[str, str], model_folder: Path):
    response = client.post("/v1/models", json={"name": "../evil", "path": str(model_folder)}, headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


def test_unknown_model_is_404(client: TestClient, auth: dict[str, str]):
    response = client.get("/v1/models/42", headers=auth)
    assert response.status_code == 404
    assert "42" in response.json()["detail"]


def test_delete_model(client: TestClient, auth: dict[str, str], model_id: int, model_folder: Path):
    assert client.delete(f"/v1/models/{model_id}", headers=auth).status_code == 200
    assert client.get(f"/v1/models/{model_id}", headers=auth).status_code == 404
    assert (model_folder / "config.json").exists()


def test_delete_model_in_use_is_409(client: TestClient, auth: dict[str, str], model_id: int, job_id: int):
    response = client.delete(f"/v1/models/{model_id}", headers=auth)
    assert response.status_code == 409
    assert str(job_id) in response.json()["detail"]


def test_malformed_config_is_422_not_500(client: TestClient, auth: dict[str, str], tmp_path: Path):
    folder = write_model_folder(tmp_path / "broken")
    (folder / "config.json").write_text("{not json")
    response = client.post("/v1/models", json={"name": "broken", "path": str(folder)}, headers=auth)
    assert response.status_code == 422
    assert "config.json" in response.json()["detail"]


def test_unknown_field_is_422(client: TestClient, auth: dict[str, str], model_folder: Path):
    response = client.post("/v1/models", json={"name": "x", "path": str(model_folder), "paht": "typo"}, headers=auth)
    assert response.status_code == 422
    assert json.dumps(response.json()).count("paht") >= 1
