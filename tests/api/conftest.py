"""API test fixtures: real Settings in tmp_path, a real SQLite file, a real TestClient with the real token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from api.main import create_app
from mftd.db import make_engine
from mftd.settings import Settings
from tests.api.hf_folders import write_model_folder

CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.db_path)
    yield engine
    engine.dispose()


@pytest.fixture
def changes() -> list[str]:
    """Each on_change call appends one entry."""
    return []


@pytest.fixture
def client(settings: Settings, engine: Engine, changes: list[str]) -> Iterator[TestClient]:
    app = create_app(settings, engine, on_change=lambda: changes.append("change"), sse_poll_seconds=0.05)
    # A loopback base URL: the app refuses any other Host header (DNS rebinding), TestClient's default "testserver" too.
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.fixture
def token(client: TestClient, settings: Settings) -> str:
    return settings.token_path.read_text().strip()


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    return write_model_folder(tmp_path / "tiny-gpt2", chat_template=CHATML)


@pytest.fixture
def model_id(client: TestClient, auth: dict[str, str], model_folder: Path) -> int:
    response = client.post("/v1/models", json={"name": "tiny", "path": str(model_folder)}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def dataset_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    lines = [{"prompt": f"what is {n} plus one?", "completion": f" {n + 1}"} for n in range(5)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def dataset_id(client: TestClient, auth: dict[str, str], dataset_file: Path) -> int:
    with open(dataset_file, "rb") as file:
        response = client.post("/v1/datasets", data={"name": "sums"}, files={"file": ("train.jsonl", file, "application/jsonl")}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def job_id(client: TestClient, auth: dict[str, str], model_id: int, dataset_id: int) -> int:
    response = client.post("/v1/jobs", json={"model": model_id, "dataset": dataset_id, "max_steps": 3}, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]
