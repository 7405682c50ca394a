"""Bad input answers 4xx, never 500 (the client fixture re-raises any server error)."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

HUGE = 2**70


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "expected"),
    [
        ("post", "/v1/models", {"json": {"name": "a", "path": "/tmp/\x00x"}}, 422),
        ("post", "/v1/models", {"json": {"name": "a", "path": "~no-such-user-here/x"}}, 422),
        ("post", "/v1/models", {"json": [1, 2]}, 422),
        ("post", "/v1/models", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 422),
        ("post", "/v1/datasets", {"data": {"name": "a", "path": "/tmp/\x00x"}}, 422),
        ("post", "/v1/datasets", {"data": {"name": "a", "path": "/dev/null"}}, 422),
        ("post", "/v1/datasets", {"data": {"name": "a", "file": "not a file"}}, 422),
        ("get", f"/v1/jobs/{HUGE}", {}, 404),
        ("post", f"/v1/jobs/{HUGE}/pause", {}, 404),
        ("get", f"/v1/models/{HUGE}", {}, 404),
        ("delete", f"/v1/datasets/{HUGE}", {}, 404),
        ("get", f"/v1/jobs?skip={HUGE}", {}, 422),
        ("get", f"/v1/jobs/1/events?after={HUGE}", {}, 422),
        ("get", "/v1/jobs/1/events", {"headers": {"Accept": "text/event-stream", "Last-Event-ID": str(HUGE)}}, 422),
        ("post", "/v1/jobs", {"json": {"model": HUGE, "dataset": 1}}, 422),
        ("post", "/v1/jobs", {"json": {"model": True, "dataset": 1}}, 422),
        ("post", "/v1/jobs", {"json": {"model": 1, "dataset": 1, "lora_target_modules": []}}, 422),
        ("get", "/v1/jobs/1/artifacts/a%00b", {}, 422),
    ],
)
def test_bad_input_is_4xx(client: TestClient, auth: dict[str, str], job_id: int, method: str, url: str, kwargs: dict, expected: int):
    kwargs = {**kwargs, "headers": {**auth, **kwargs.get("headers", {})}}
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == expected, response.text


def test_unreadable_model_folder_is_422(client: TestClient, auth: dict[str, str], model_folder: Path):
    (model_folder / "config.json").unlink()
    (model_folder / "config.json").mkdir()
    response = client.post("/v1/models", json={"name": "odd", "path": str(model_folder)}, headers=auth)
    assert response.status_code == 422
