"""The OpenAI-compatible fine-tuning subset, driven by the real ``openai`` package against the real app on a socket.

The fast tests serve the app without a scheduler, so jobs stay queued; the slow one trains a tiny
real model through a real daemon until the job succeeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy.engine import Engine

from api.main import create_app
from mftd.settings import Settings
from tests.api.live_server import serve_in_thread


@pytest.fixture
def server(settings: Settings, engine: Engine, model_folder: Path) -> Iterator[tuple[str, str]]:
    """(base URL, token) of a served app with model ``tiny`` registered."""
    with serve_in_thread(create_app(settings, engine, sse_poll_seconds=0.05)) as url:
        token = settings.token_path.read_text().strip()
        response = httpx.post(f"{url}/v1/models", json={"name": "tiny", "path": str(model_folder)}, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 201, response.text
        yield url, token


@pytest.fixture
def client(server: tuple[str, str]) -> openai.OpenAI:
    url, token = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)


@pytest.fixture
def mftd_http(server: tuple[str, str]) -> Iterator[httpx.Client]:
    url, token = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        yield http


def test_upload_create_list_retrieve_events_cancel(client: openai.OpenAI, mftd_http: httpx.Client, dataset_file: Path):
    uploaded = client.files.create(file=dataset_file.open("rb"), purpose="fine-tune")
    assert uploaded.id == "file-1" and uploaded.object == "file" and uploaded.purpose == "fine-tune"
    assert uploaded.filename == "train.jsonl" and uploaded.bytes == dataset_file.stat().st_size
    assert uploaded.status == "processed"
    assert [file.id for file in client.files.list()] == ["file-1"]
    assert client.files.retrieve("file-1").bytes == uploaded.bytes

    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5},
        suffix="sums",
        seed=7,
    )
    assert job.object == "fine_tuning.job"
    assert job.id == "ftjob-1" and job.status == "queued" and job.model == "tiny" and job.training_file == "file-1"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(0.5)
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.batch_size == 4
    assert job.seed == 7 and job.fine_tuned_model is None and job.finished_at is None and job.error is None
    assert job.metadata["mftd_status"] == "queued"

    config = mftd_http.get("/v1/jobs/1").json()["config"]
    assert config["epochs"] == 2 and config["batch_size"] == 1 and config["grad_accum_steps"] == 4
    assert config["learning_rate"] == pytest.approx(1e-4) and config["seed"] == 7
    assert mftd_http.get("/v1/jobs/1").json()["name"] == "sums"

    assert [listed.id for listed in client.fine_tuning.jobs.list()] == ["ftjob-1"]
    assert client.fine_tuning.jobs.retrieve("ftjob-1").status == "queued"

    events = client.fine_tuning.jobs.list_events("ftjob-1")
    assert events.data[0].object == "fine_tuning.job.event"
    assert events.data[0].id.startswith("ftevent-") and events.data[0].level == "info"
    assert "queued: lora fine-tuning of model tiny" in events.data[0].message

    assert client.fine_tuning.jobs.checkpoints.list("ftjob-1").data == []

    cancelled = client.fine_tuning.jobs.cancel("ftjob-1")
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    messages = [event.message for event in client.fine_tuning.jobs.list_events("ftjob-1")]
    assert messages[0] == "queued -> cancelled: cancelled by the user"  # newest first, as OpenAI lists them


def test_pause_and_resume(client: openai.OpenAI, dataset_file: Path):
    file_id = client.files.create(file=dataset_file.open("rb"), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused" and paused.metadata["mftd_status"] == "paused"
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    with pytest.raises(openai.ConflictError, match="cannot become queued"):
        client.fine_tuning.jobs.resume(job.id)


def test_defaults_and_the_mftd_extension(client: openai.OpenAI, mftd_http: httpx.Client, dataset_file: Path):
    file_id = client.files.create(file=dataset_file.open("rb"), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        extra_body={"mftd": {"max_steps": 5, "lora_rank": 4, "priority": 3}},
    )
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.batch_size == 4  # mftd's default 1 x 4
    assert job.hyperparameters.learning_rate_multiplier == 1
    mftd_job = mftd_http.get(f"/v1/jobs/{job.id.removeprefix('ftjob-')}").json()
    assert mftd_job["priority"] == 3
    assert mftd_job["config"]["max_steps"] == 5 and mftd_job["config"]["lora_rank"] == 4 and mftd_job["config"]["epochs"] == 3


def test_lists_are_newest_first_and_paginate(client: openai.OpenAI, dataset_file: Path):
    file_id = client.files.create(file=dataset_file.open("rb"), purpose="fine-tune").id
    created = [client.fine_tuning.jobs.create(model="tiny", training_file=file_id).id for _ in range(3)]
    first_page = client.fine_tuning.jobs.list(limit=2)
    assert [job.id for job in first_page.data] == created[::-1][:2] and first_page.has_more
    assert [job.id for job in client.fine_tuning.jobs.list(limit=2)] == created[::-1]  # auto-pagination follows `after`
    assert client.fine_tuning.jobs.list(after=created[0]).data == []


def test_same_file_name_twice_gets_two_files(client: openai.OpenAI, mftd_http: httpx.Client, dataset_file: Path):
    first = client.files.create(file=dataset_file.open("rb"), purpose="fine-tune")
    second = client.files.create(file=dataset_file.open("rb"), purpose="fine-tune")
    assert first.id != second.id
    assert [dataset["name"] for dataset in mftd_http.get("/v1/datasets").json()["data"]] == ["train", "train-2"]
    assert [file.id for file in client.files.list(order="asc")] == [first.id, second.id]
    assert client.files.list(purpose="batch").data == []
    assert client.files.delete(second.id).deleted
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.files.retrieve(second.id)


def test_a_file_that_is_not_jsonl_is_400_naming_the_line(client: openai.OpenAI, tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("just some notes\nnot json at all\n")
    with pytest.raises(openai.BadRequestError) as raised:
        client.files.create(file=text.open("rb"), purpose="fine-tune")
    assert raised.value.status_code == 400
    assert raised.value.code == "invalid_file" and raised.value.param == "file"
    assert "not valid fine-tuning JSONL: line 1: not valid JSON" in raised.value.message
    assert client.files.list().data == []


def test_wrong_purpose_is_400(client: openai.OpenAI, dataset_file: Path):
    with pytest.raises(openai.BadRequestError, match="purpose 'assistants' is not supported"):
        client.files.create(file=dataset_file.open("rb"), purpose="assistants")


def test_wrong_api_key_is_401(server: tuple[str, str]):
    url, _token = server
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.fine_tuning.jobs.list()
    assert raised.value.code == "invalid_api_key"
    assert "wrong token" in raised.value.message


def test_unknown_ids_are_404(client: openai.OpenAI):
    for job_id in ("ftjob-99", "nonsense", "ftjob-99999999999999999999999"):
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.fine_tuning.jobs.retrieve(job_id)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "tiny"}, "training_file: Field required"),
        ({"training_file": "file-1"}, "model: Field required"),
        ({"model": "tiny", "training_file": "file-9"}, "training file 'file-9' does not exist"),
        ({"model": "tiny", "training_file": "bogus"}, "training file 'bogus' does not exist"),
        ({"model": "tiny", "training_file": "file-1", "method": {"type": "dpo"}}, "method type 'dpo' is not supported"),
        ({"model": "tiny", "training_file": "file-1", "validation_file": "file-1"}, "validation_file is not supported"),
        ({"model": "tiny", "training_file": "file-1", "metadata": {"a": "b"}}, "does not store metadata"),
        ({"model": "tiny", "training_file": "file-1", "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"model": "tiny", "training_file": "file-1", "hyperparameters": {"learning_rate_multiplier": 9000}}, "learning_rate_multiplier"),
        ({"model": "tiny", "training_file": "file-1", "mftd": {"nope": 1}}, "unknown mftd field(s): nope"),
        ({"model": "tiny", "training_file": "file-1", "mftd": {"max_steps": 0}}, "max_steps: Input should be greater than or equal to 1"),
        ({"model": "tiny", "training_file": "file-1", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_job_requests_are_400_with_a_message(mftd_http: httpx.Client, dataset_file: Path, body: dict, message: str):
    with dataset_file.open("rb") as file:
        assert mftd_http.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", file)}).status_code == 200
    response = mftd_http.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_unknown_model_is_404_listing_the_models(mftd_http: httpx.Client, dataset_file: Path):
    with dataset_file.open("rb") as file:
        mftd_http.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", file)})
    response = mftd_http.post("/v1/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": "file-1"})
    assert response.status_code == 404
    assert "Existing models: 1 (tiny)" in response.json()["error"]["message"]


def test_malformed_json_is_400_not_500(mftd_http: httpx.Client):
    response = mftd_http.post("/v1/fine_tuning/jobs", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON decode error" in response.json()["error"]["message"]


@pytest.mark.slow
def test_openai_client_follows_a_real_training_job_to_success(tmp_path: Path, tiny_qwen2: Path, chat_jsonl: Path):
    from tests.e2e.daemon_process import DaemonProcess

    daemon = DaemonProcess(tmp_path / "data")
    daemon.data_dir.mkdir()
    daemon.start()
    try:
        with daemon.client() as http:
            assert http.post("/v1/models", json={"name": "tiny-qwen2", "path": str(tiny_qwen2)}).status_code == 201
        client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.token, max_retries=0)
        file = client.files.create(file=chat_jsonl.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny-qwen2", training_file=file.id, hyperparameters={"batch_size": 2, "learning_rate_multiplier": 50}, extra_body={"mftd": {"max_steps": 4, "checkpoint_every_steps": 2}}
        )
        deadline = time.monotonic() + 240
        while job.status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {job.status}"
            time.sleep(0.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", json.dumps([event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=50)])
        assert job.fine_tuned_model == f"ft:tiny-qwen2:mftd::{job.id}"
        assert job.trained_tokens and job.trained_tokens > 0
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [checkpoint.step_number for checkpoint in checkpoints] == [2]  # the last step needs none: the adapter follows it
        assert checkpoints[0].metrics.train_loss > 0 and checkpoints[0].metrics.step == 2
        assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-2"
        assert "succeeded" in client.fine_tuning.jobs.list_events(job.id).data[0].message
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> Path:
    from tests.jobs.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", "Qwen2ForCausalLM")


@pytest.fixture
def chat_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": f"what is {n} plus one"}, {"role": "assistant", "content": f"the answer is {n + 1}"}]}
        for n in range(16)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
