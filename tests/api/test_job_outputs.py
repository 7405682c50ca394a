import io
import json
import threading
import time
import zipfile

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from mftd.db import new_session
from mftd.settings import Settings
from mftd.status import JobStatus
from mftd.tables import Checkpoint, Event, Metric
from tests.api.test_jobs import move


def _parse_sse(text: str) -> list[dict]:
    messages = []
    for block in text.strip().split("\n\n"):
        message: dict = {}
        for line in block.splitlines():
            field, _, value = line.partition(": ")
            message[field] = value
        messages.append(message)
    return messages


def test_events_as_json(client: TestClient, auth: dict[str, str], engine: Engine, job_id: int):
    move(engine, job_id, JobStatus.RUNNING)
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()
    assert [event["kind"] for event in events] == ["created", "status"]
    assert events[1]["message"] == "queued -> running: test"
    assert events[0]["created_at"].endswith("Z")
    later = client.get(f"/v1/jobs/{job_id}/events?after={events[0]['id']}", headers=auth).json()
    assert later == events[1:]


def test_events_of_unknown_job_is_404(client: TestClient, auth: dict[str, str]):
    assert client.get("/v1/jobs/77/events", headers=auth).status_code == 404
    assert client.get("/v1/jobs/77/events", headers={**auth, "Accept": "text/event-stream"}).status_code == 404


def test_event_stream_ends_once_the_job_is_final(client: TestClient, auth: dict[str, str], engine: Engine, job_id: int):
    move(engine, job_id, JobStatus.RUNNING)

    def finish_later():
        time.sleep(0.3)
        with new_session(engine) as session:
            session.add(Event(job_id=job_id, kind="log", message="step 1", data_json='{"step": 1}'))
            session.commit()
        move(engine, job_id, JobStatus.SUCCEEDED)

    worker = threading.Thread(target=finish_later)
    worker.start()
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={**auth, "Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    worker.join()
    messages = _parse_sse(text)
    events = [json.loads(message["data"]) for message in messages if "id" in message]
    assert [event["kind"] for event in events] == ["created", "status", "log", "status"]
    assert [int(message["id"]) for message in messages if "id" in message] == [event["id"] for event in events]
    assert events[2]["data"] == {"step": 1}
    assert events[3]["message"] == "running -> succeeded: test"
    assert messages[-1]["event"] == "end"
    assert json.loads(messages[-1]["data"])["status"] == "succeeded"


def test_event_stream_resumes_after_last_event_id(client: TestClient, auth: dict[str, str], engine: Engine, job_id: int):
    move(engine, job_id, JobStatus.RUNNING, JobStatus.FAILED)
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()
    headers = {**auth, "Accept": "text/event-stream", "Last-Event-ID": str(events[1]["id"])}
    text = client.get(f"/v1/jobs/{job_id}/events", headers=headers).text
    sent = [json.loads(message["data"])["id"] for message in _parse_sse(text) if "id" in message]
    assert sent == [events[2]["id"]]


def test_metrics_and_checkpoints(client: TestClient, auth: dict[str, str], engine: Engine, job_id: int):
    with new_session(engine) as session:
        session.add(Metric(job_id=job_id, step=1, loss=2.5, learning_rate=1e-4, tokens=64))
        session.add(Metric(job_id=job_id, step=1, split="eval", loss=2.7))
        session.add(Checkpoint(job_id=job_id, step=1, path="/x/checkpoints/step-1", size_bytes=10))
        session.commit()
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth).json()
    assert [(metric["split"], metric["loss"]) for metric in metrics] == [("train", 2.5), ("eval", 2.7)]
    assert len(client.get(f"/v1/jobs/{job_id}/metrics?split=eval", headers=auth).json()) == 1
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()
    assert [(checkpoint["step"], checkpoint["size_bytes"]) for checkpoint in checkpoints] == [(1, 10)]


def _write_outputs(settings: Settings, job_id: int) -> None:
    job_dir = settings.job_dir(job_id)
    (job_dir / "adapter" / "nested").mkdir(parents=True)
    (job_dir / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    (job_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 1000)
    (job_dir / "adapter" / "nested" / "note.txt").write_text("hi")
    (job_dir / "config.json").write_text('{"method": "lora"}')
    (job_dir / "worker.log").write_text("started\n")
    (job_dir / "checkpoints" / "step-1").mkdir(parents=True)
    (job_dir / "checkpoints" / "step-1" / "state.pt").write_bytes(b"secret")


def test_artifacts_list_and_download(client: TestClient, auth: dict[str, str], settings: Settings, job_id: int):
    _write_outputs(settings, job_id)
    artifacts = client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json()
    assert [(artifact["path"], artifact["kind"]) for artifact in artifacts] == [
        ("adapter", "folder"),
        ("config.json", "file"),
        ("worker.log", "file"),
    ]
    assert artifacts[0]["size_bytes"] == len('{"r": 8}') + 1000 + 2

    config = client.get(artifacts[1]["url"], headers=auth)
    assert config.status_code == 200 and config.json() == {"method": "lora"}

    archive = client.get(artifacts[0]["url"], headers=auth)
    assert archive.status_code == 200
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        assert sorted(zipped.namelist()) == ["adapter_config.json", "adapter_model.safetensors", "nested/note.txt"]
        assert zipped.read("adapter_model.safetensors") == b"\x00" * 1000
        assert zipped.testzip() is None

    nested = client.get(f"/v1/jobs/{job_id}/artifacts/adapter/nested/note.txt", headers=auth)
    assert nested.text == "hi"


def test_artifacts_of_a_job_without_outputs(client: TestClient, auth: dict[str, str], job_id: int):
    assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json() == []
    response = client.get(f"/v1/jobs/{job_id}/artifacts/adapter", headers=auth)
    assert response.status_code == 404


def test_path_traversal_is_refused(client: TestClient, auth: dict[str, str], settings: Settings, job_id: int):
    _write_outputs(settings, job_id)
    (settings.data_dir / "secret.txt").write_text("do not serve")
    for path in ("..%2F..%2Fsecret.txt", "%2E%2E/%2E%2E/secret.txt", "adapter/..%2F..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "checkpoints/step-1/state.pt"):
        response = client.get(f"/v1/jobs/{job_id}/artifacts/{path}", headers=auth)
        assert response.status_code in (404, 422), (path, response.status_code)
        assert "do not serve" not in response.text and "secret" != response.text
