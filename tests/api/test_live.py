"""The dashboard's Server-Sent Events streams, read over a real socket the way the page's fetch() reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from api.main import create_app
from mftd.db import new_session
from mftd.settings import Settings
from mftd.tables import Metric
from tests.api.live_server import serve_in_thread


@pytest.fixture
def http(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    with serve_in_thread(create_app(settings, engine, sse_poll_seconds=0.05)) as url:
        token = settings.token_path.read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            yield client


def _messages(response: httpx.Response) -> Iterator[tuple[str, object]]:
    name, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))


def test_job_stream_sends_the_job_its_metrics_and_events_then_ends(client: TestClient, http: httpx.Client, auth, job_id: int, engine: Engine):
    with new_session(engine) as session:
        session.add(Metric(job_id=job_id, step=1, loss=2.5, tokens_per_second=10.0, rss_mb=100.0))
        session.add(Metric(job_id=job_id, step=1, split="eval", loss=2.7))
        session.commit()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    with http.stream("GET", f"/v1/live/jobs/{job_id}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = list(_messages(response))  # the stream ends by itself: the job is final
    names = [name for name, _ in messages]
    assert names[0] == "job" and names[-1] == "end"
    assert messages[0][1]["status"] == "cancelled"
    metrics = next(payload for name, payload in messages if name == "metrics")
    assert [(metric["split"], metric["loss"]) for metric in metrics] == [("train", 2.5), ("eval", 2.7)]
    events = [payload["message"] for name, payload in messages if name == "event"]
    assert events[-1] == "queued -> cancelled: cancelled by the user"
    assert messages[-1][1]["status"] == "cancelled"


def test_jobs_stream_sends_the_list_and_the_device(http: httpx.Client, client: TestClient, auth, job_id: int):
    seen: dict[str, object] = {}
    with http.stream("GET", "/v1/live/jobs") as response:
        for name, payload in _messages(response):
            seen[name] = payload
            if {"jobs", "device"} <= set(seen):
                break
    assert [job["id"] for job in seen["jobs"]["data"]] == [job_id]
    assert "can_train" in seen["device"] and seen["device"]["readings"]


def test_streams_need_the_token_and_an_existing_job(http: httpx.Client):
    assert http.get("/v1/live/jobs/99").status_code == 404
    assert httpx.get(http.base_url.join("/v1/live/jobs")).status_code == 401
