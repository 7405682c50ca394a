"""The job state machine: allowed moves, the named error, and the compare-and-set write."""

from __future__ import annotations

import pytest
from sqlmodel import select

from mftd.db import make_engine, new_session
from mftd.errors import InvalidTransitionError
from mftd.status import ALLOWED_MOVES, FINAL_STATUSES, JobStatus, set_status
from mftd.tables import Dataset, Event, Job, Model


@pytest.fixture
def engine(tmp_path):
    return make_engine(tmp_path / "mftd.db")


@pytest.fixture
def job_id(engine) -> int:
    with new_session(engine) as session:
        model = Model(name="m", path="/m", architecture="Qwen2ForCausalLM", model_type="qwen2",
                      num_parameters=1, dtype="float32", context_length=64, has_chat_template=True)
        dataset = Dataset(name="d", path="/d.jsonl", format="text", num_examples=1, size_bytes=1)
        session.add(model)
        session.add(dataset)
        session.commit()
        job = Job(model_id=model.id, dataset_id=dataset.id, config_json="{}")
        session.add(job)
        session.commit()
        return job.id


def test_every_legal_move_is_recorded_as_an_event(engine, job_id):
    with new_session(engine) as session:
        job = session.get(Job, job_id)
        for status in (JobStatus.RUNNING, JobStatus.WAITING, JobStatus.RUNNING, JobStatus.INTERRUPTED,
                       JobStatus.RUNNING, JobStatus.SUCCEEDED):
            set_status(session, job, status, reason=f"to {status.value}")
        messages = [event.message for event in session.exec(select(Event).order_by(Event.id))]
    assert messages[0] == "queued -> running: to running"
    assert messages[-1] == "running -> succeeded: to succeeded"
    assert len(messages) == 6
    assert job.finished_at is not None and job.started_at is not None


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
def test_final_statuses_allow_no_move(final):
    assert ALLOWED_MOVES[final] == frozenset()


def test_illegal_move_raises_a_named_error_that_lists_the_allowed_moves(engine, job_id):
    with new_session(engine) as session:
        job = session.get(Job, job_id)
        set_status(session, job, JobStatus.RUNNING)
        set_status(session, job, JobStatus.SUCCEEDED)
        with pytest.raises(InvalidTransitionError, match="job .* is succeeded; it cannot become paused"):
            set_status(session, job, JobStatus.PAUSED)
        assert session.get(Job, job_id).status == JobStatus.SUCCEEDED


def test_a_stale_copy_loses_to_a_concurrent_writer(engine, job_id):
    with new_session(engine) as api_session, new_session(engine) as scheduler_session:
        seen_by_api = api_session.get(Job, job_id)
        seen_by_scheduler = scheduler_session.get(Job, job_id)
        set_status(scheduler_session, seen_by_scheduler, JobStatus.RUNNING, "started")
        # queued -> paused is legal from what the API read, but the job is running now.
        with pytest.raises(InvalidTransitionError, match="changed from queued to running"):
            set_status(api_session, seen_by_api, JobStatus.CANCELLED)
        assert seen_by_api.status == JobStatus.RUNNING
    with new_session(engine) as session:
        assert session.get(Job, job_id).status == JobStatus.RUNNING
