import io
import json

import pytest

from mftd import registry
from mftd.db import make_engine, new_session
from mftd.errors import ConflictError, DatasetValidationError, InvalidTransitionError, InvalidValueError, NotFoundError
from mftd.jobconfig import JobConfig
from mftd.settings import Settings
from mftd.status import JobStatus, set_status
from mftd.tables import Event, Metric
from tests.api.hf_folders import write_model_folder

PROMPTS = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n'
CHAT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture
def settings(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    return settings


@pytest.fixture
def session(settings):
    engine = make_engine(settings.db_path)
    with new_session(engine) as session:
        yield session
    engine.dispose()


@pytest.fixture
def model(session, settings, tmp_path):
    return registry.register_model(session, settings, "tiny", write_model_folder(tmp_path / "tiny"))


@pytest.fixture
def dataset(session, settings):
    return registry.register_dataset(session, settings, "prompts", upload=PROMPTS)


@pytest.fixture
def job(session, settings, model, dataset):
    return registry.create_job(session, settings, model.id, dataset.id, JobConfig(max_seq_len=64))


def test_model_names_are_unique_and_safe(session, settings, model, tmp_path):
    with pytest.raises(ConflictError, match="id 1"):
        registry.register_model(session, settings, "tiny", tmp_path / "tiny")
    with pytest.raises(InvalidValueError) as caught:
        registry.register_model(session, settings, "a/b", tmp_path / "tiny")
    assert caught.value.field == "name"


def test_upload_from_a_stream(session, settings):
    dataset = registry.register_dataset(session, settings, "s", upload=io.BytesIO(PROMPTS))
    assert dataset.num_examples == 2
    assert (settings.datasets_dir / "s.jsonl").read_bytes() == PROMPTS


def test_bad_upload_leaves_nothing_behind(session, settings):
    with pytest.raises(DatasetValidationError):
        registry.register_dataset(session, settings, "bad", upload=b"{}\n")
    assert list(settings.datasets_dir.iterdir()) == []
    assert registry.list_datasets(session) == ([], 0)


def test_upload_and_path_are_exclusive(session, settings, tmp_path):
    with pytest.raises(InvalidValueError):
        registry.register_dataset(session, settings, "x")
    with pytest.raises(InvalidValueError):
        registry.register_dataset(session, settings, "x", upload=PROMPTS, source_path=tmp_path / "y.jsonl")


def test_create_job_by_name_and_by_digits(session, settings, model, dataset):
    job = registry.create_job(session, settings, "tiny", str(dataset.id), JobConfig())
    assert (job.model_id, job.dataset_id, job.status) == (model.id, dataset.id, JobStatus.QUEUED)
    assert registry.job_config(job).max_seq_len == 128  # the unset default is capped at the context length
    assert [event.kind for event in registry.list_events(session, job.id)] == ["created"]


def test_unknown_references_say_what_exists(session, settings, model, dataset):
    with pytest.raises(NotFoundError, match=r"'gpt9'.*1 \(tiny\)"):
        registry.create_job(session, settings, "gpt9", dataset.id, JobConfig())
    with pytest.raises(NotFoundError, match="dataset 5 does not exist.*prompts"):
        registry.create_job(session, settings, model.id, 5, JobConfig())


def test_config_must_fit_the_model_and_dataset(session, settings, model, dataset, tmp_path):
    with pytest.raises(InvalidValueError) as caught:
        registry.create_job(session, settings, model.id, dataset.id, JobConfig(max_seq_len=129))
    assert caught.value.field == "max_seq_len"
    with pytest.raises(InvalidValueError) as caught:
        registry.create_job(session, settings, model.id, dataset.id, JobConfig(dataset_format="text"))
    assert caught.value.field == "dataset_format"
    chat = registry.register_dataset(session, settings, "chat", upload=CHAT)
    job = registry.create_job(session, settings, model.id, chat.id, JobConfig())
    [warning] = [event for event in registry.list_events(session, job.id) if event.level == "warning"]
    assert "no chat template" in warning.message and "fallback" in warning.message


def test_pause_resume_cancel(session, job):
    assert registry.pause_job(session, job.id).status == JobStatus.PAUSED
    with pytest.raises(InvalidTransitionError):
        registry.pause_job(session, job.id)
    assert registry.resume_job(session, job.id).status == JobStatus.QUEUED
    assert registry.cancel_job(session, job.id).status == JobStatus.CANCELLED
    with pytest.raises(InvalidTransitionError, match="final"):
        registry.cancel_job(session, job.id)


def test_running_job_gets_a_stop_request(session, job):
    set_status(session, job, JobStatus.RUNNING)
    paused = registry.pause_job(session, job.id)
    assert (paused.status, paused.stop_request) == (JobStatus.RUNNING, "pause")
    with pytest.raises(InvalidTransitionError):
        registry.resume_job(session, job.id)
    assert registry.cancel_job(session, job.id).stop_request == "cancel"
    with pytest.raises(ConflictError, match="being cancelled"):
        registry.pause_job(session, job.id)
    kinds = [event.kind for event in registry.list_events(session, job.id)]
    assert kinds == ["created", "status", "stop_request", "stop_request"]


@pytest.mark.parametrize("status", [JobStatus.WAITING, JobStatus.INTERRUPTED])
def test_waiting_and_interrupted_jobs_pause_at_once(session, job, status):
    set_status(session, job, JobStatus.RUNNING)
    set_status(session, job, status)
    assert registry.pause_job(session, job.id).status == JobStatus.PAUSED


def test_list_jobs_by_status_newest_first(session, settings, model, dataset, job):
    second = registry.create_job(session, settings, model.id, dataset.id, JobConfig())
    registry.cancel_job(session, job.id)
    jobs, count = registry.list_jobs(session)
    assert [listed.id for listed in jobs] == [second.id, job.id] and count == 2
    assert [listed.id for listed in registry.list_jobs(session, JobStatus.CANCELLED)[0]] == [job.id]


def test_events_after_id(session, job):
    set_status(session, job, JobStatus.RUNNING)
    events = registry.list_events(session, job.id)
    assert registry.list_events(session, job.id, after_id=events[0].id) == events[1:]


def test_delete_only_finished_jobs_with_their_records(session, settings, model, dataset, job):
    with pytest.raises(ConflictError, match="only finished jobs"):
        registry.delete_job(session, settings, job.id)
    session.add(Metric(job_id=job.id, step=1, loss=1.0))
    session.commit()
    settings.job_dir(job.id).mkdir(parents=True)
    registry.cancel_job(session, job.id)
    with pytest.raises(ConflictError, match="finished jobs 1"):
        registry.delete_model(session, model.id)
    registry.delete_job(session, settings, job.id)
    assert not settings.job_dir(job.id).exists()
    assert registry.list_jobs(session) == ([], 0)
    assert session.exec(Event.__table__.select()).all() == []
    registry.delete_model(session, model.id)
    registry.delete_dataset(session, settings, dataset.id)
    assert list(settings.datasets_dir.iterdir()) == []


def test_unfinished_job_blocks_deleting_its_dataset(session, settings, dataset, job):
    with pytest.raises(ConflictError, match="unfinished jobs 1 \\(queued\\)"):
        registry.delete_dataset(session, settings, dataset.id)


def test_artifacts(session, settings, job):
    job_dir = settings.job_dir(job.id)
    (job_dir / "adapter").mkdir(parents=True)
    (job_dir / "adapter" / "weights").write_bytes(b"12345")
    (job_dir / "checkpoints").mkdir()
    (job_dir / ".partial").write_text("x")
    (job_dir / "config.json").write_text(json.dumps({"a": 1}))
    assert registry.list_artifacts(session, settings, job.id) == [
        registry.Artifact("adapter", True, 5),
        registry.Artifact("config.json", False, 8),
    ]
    assert registry.artifact_path(session, settings, job.id, "adapter/weights") == (job_dir / "adapter" / "weights").resolve()
    for bad in ("../x", "/etc/passwd", "adapter/../../x", "checkpoints", ".partial", ""):
        with pytest.raises(InvalidValueError):
            registry.artifact_path(session, settings, job.id, bad)
    with pytest.raises(NotFoundError, match="adapter, config.json"):
        registry.artifact_path(session, settings, job.id, "model")
