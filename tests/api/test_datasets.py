import json
from pathlib import Path

from fastapi.testclient import TestClient

from mftd.settings import Settings


def _upload(client: TestClient, auth: dict[str, str], name: str, content: bytes, **form):
    return client.post("/v1/datasets", data={"name": name, **form}, files={"file": ("data.jsonl", content, "application/jsonl")}, headers=auth)


def test_upload(client: TestClient, auth: dict[str, str], settings: Settings, dataset_file: Path):
    response = _upload(client, auth, "sums", dataset_file.read_bytes())
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["format"] == "prompt_completion"
    assert dataset["num_examples"] == 5
    assert dataset["size_bytes"] == dataset_file.stat().st_size
    stored = settings.datasets_dir / "sums.jsonl"
    assert dataset["path"] == str(stored.resolve())
    assert stored.read_bytes() == dataset_file.read_bytes()
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=auth).json() == dataset
    assert client.get("/v1/datasets", headers=auth).json() == {"data": [dataset], "count": 1}


def test_malformed_line_is_422_naming_the_line(client: TestClient, auth: dict[str, str], settings: Settings):
    content = b'{"text": "fine"}\n\n{"text": "also fine"}\n{"text": oops}\n[1, 2]\n{"messages": []}\n{"text": 5}\n'
    response = _upload(client, auth, "bad", content)
    assert response.status_code == 422
    body = response.json()
    problems = {problem["line"]: problem["error"] for problem in body["problems"]}
    assert set(problems) == {4, 5, 6, 7}
    assert "not valid JSON" in problems[4]
    assert "not an object" in problems[5]
    assert "in messages format, but the file is text" in problems[6]
    assert '"text" is a number' in problems[7]
    assert "4 problems" in body["detail"]
    assert body["detail"].startswith("dataset data.jsonl:"), "the message names the uploaded file, not a temp file"
    assert list(settings.datasets_dir.iterdir()) == []  # a bad upload leaves nothing behind


def test_messages_without_assistant_turn(client: TestClient, auth: dict[str, str]):
    line = {"messages": [{"role": "user", "content": "hi"}]}
    response = _upload(client, auth, "chat", (json.dumps(line) + "\n").encode())
    assert response.status_code == 422
    assert response.json()["problems"] == [{"line": 1, "error": '"messages" has no assistant turn, so there is nothing to learn from this example'}]


def test_empty_upload_is_422(client: TestClient, auth: dict[str, str]):
    response = _upload(client, auth, "empty", b"\n\n")
    assert response.status_code == 422
    assert response.json()["problems"][0]["line"] == 0


def test_register_by_path(client: TestClient, auth: dict[str, str], settings: Settings, dataset_file: Path):
    response = client.post("/v1/datasets", data={"name": "local", "path": str(dataset_file)}, headers=auth)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["path"] == str(dataset_file.resolve())
    assert list(settings.datasets_dir.iterdir()) == []
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=auth).status_code == 200
    assert dataset_file.exists()  # a dataset registered by path is not ours to delete


def test_missing_path_is_422(client: TestClient, auth: dict[str, str], tmp_path: Path):
    response = client.post("/v1/datasets", data={"name": "ghost", "path": str(tmp_path / "none.jsonl")}, headers=auth)
    assert response.status_code == 422
    assert "does not exist" in response.json()["detail"]


def test_neither_file_nor_path_is_422(client: TestClient, auth: dict[str, str]):
    response = client.post("/v1/datasets", data={"name": "nothing"}, headers=auth)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_declared_format_must_match(client: TestClient, auth: dict[str, str], dataset_file: Path):
    response = _upload(client, auth, "sums", dataset_file.read_bytes(), format="text")
    assert response.status_code == 422
    assert response.json()["problems"][0]["line"] == 1


def test_unknown_format_is_422_naming_format(client: TestClient, auth: dict[str, str], dataset_file: Path):
    response = _upload(client, auth, "sums", dataset_file.read_bytes(), format="csv")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "format"]


def test_duplicate_name_is_409_and_keeps_the_first_file(client: TestClient, auth: dict[str, str], settings: Settings, dataset_id: int):
    before = (settings.datasets_dir / "sums.jsonl").read_bytes()
    response = _upload(client, auth, "sums", b'{"text": "other"}\n')
    assert response.status_code == 409
    assert (settings.datasets_dir / "sums.jsonl").read_bytes() == before


def test_delete_uploaded_dataset_removes_the_file(client: TestClient, auth: dict[str, str], settings: Settings, dataset_id: int):
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 200
    assert not (settings.datasets_dir / "sums.jsonl").exists()
    assert client.get(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 404


def test_delete_dataset_in_use_is_409(client: TestClient, auth: dict[str, str], dataset_id: int, job_id: int):
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 409
