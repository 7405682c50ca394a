"""Live updates for the dashboard as Server-Sent Events: the job list with the device, and one job's progress.

A browser reads these with ``fetch()`` and the ``Authorization`` header (``EventSource`` cannot send
headers, and a token in a URL would end up in logs and history).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from api.deps import EngineDep, SettingsDep
from api.routes.device import read_device
from api.schemas import EventPublic, JobPublic, JobsPublic, MetricPublic
from mftd import registry
from mftd.db import new_session
from mftd.errors import NotFoundError
from mftd.settings import Settings
from mftd.status import JobStatus
from mftd.tables import Event, Job, Metric

router = APIRouter(prefix="/live", tags=["live"])

EVENT_STREAM_TYPE = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_SECONDS = 15.0
DEVICE_EVERY_SECONDS = 5.0
JOBS_IN_LIST = 100
ROWS_PER_POLL = 2000
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {EVENT_STREAM_TYPE: {}}, "description": "Server-Sent Events; see the route's description for the event names."}
}


def _sse(name: str, payload: str, event_id: Optional[int] = None) -> str:
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {name}\n{id_line}data: {payload}\n\n"


def _jobs_signature(engine: Engine) -> tuple:
    """Changes whenever a job is added, deleted, moves or makes progress (each of those sets updated_at)."""
    with new_session(engine) as session:
        return tuple(session.exec(select(func.count(), func.max(Job.updated_at), func.max(Job.id))).one())


def _jobs_snapshot(engine: Engine) -> JobsPublic:
    with new_session(engine) as session:
        jobs, count = registry.list_jobs(session, None, 0, JOBS_IN_LIST)
        return JobsPublic(data=[JobPublic.from_row(job) for job in jobs], count=count)


async def _stream_jobs(engine: Engine, settings: Settings, poll_seconds: float) -> AsyncIterator[str]:
    last_signature: Optional[tuple] = None
    last_device = last_sent = float("-inf")
    while True:
        now = time.monotonic()
        signature = await run_in_threadpool(_jobs_signature, engine)
        if signature != last_signature:
            snapshot = await run_in_threadpool(_jobs_snapshot, engine)
            yield _sse("jobs", snapshot.model_dump_json())
            last_signature, last_sent = signature, now
        if now - last_device >= DEVICE_EVERY_SECONDS:
            device = await run_in_threadpool(read_device, settings)
            yield _sse("device", device.model_dump_json())
            last_device = last_sent = now
        if now - last_sent >= KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            last_sent = now
        await asyncio.sleep(poll_seconds)


@router.get("/jobs", response_model=None, responses=STREAM_RESPONSES)
async def stream_jobs(request: Request, engine: EngineDep, settings: SettingsDep) -> StreamingResponse:
    """Server-Sent Events: `jobs` (the newest jobs, as GET /v1/jobs) whenever one changes, and `device` (as GET /v1/device) every few seconds."""
    return StreamingResponse(
        _stream_jobs(engine, settings, request.app.state.sse_poll_seconds), media_type=EVENT_STREAM_TYPE, headers=STREAM_HEADERS
    )


@dataclass
class _JobUpdate:
    job: Optional[JobPublic]
    metrics: list[MetricPublic] = field(default_factory=list)
    events: list[EventPublic] = field(default_factory=list)


def _read_job_update(engine: Engine, job_id: int, after_metric: int, after_event: int) -> _JobUpdate:
    """The job (None once deleted) read before its new rows, so a final status comes with its last metrics and events."""
    with new_session(engine) as session:
        try:
            job = JobPublic.from_row(registry.get_job(session, job_id))
        except NotFoundError:
            return _JobUpdate(job=None)
        metrics = session.exec(
            select(Metric).where(Metric.job_id == job_id, col(Metric.id) > after_metric).order_by(col(Metric.id)).limit(ROWS_PER_POLL)
        ).all()
        events = session.exec(
            select(Event).where(Event.job_id == job_id, col(Event.id) > after_event).order_by(col(Event.id)).limit(ROWS_PER_POLL)
        ).all()
        return _JobUpdate(
            job=job,
            metrics=[MetricPublic.model_validate(metric) for metric in metrics],
            events=[EventPublic.from_row(event) for event in events],
        )


def _check_job_exists(engine: Engine, job_id: int) -> None:
    """Raises NotFoundError (404) before a stream starts, rather than a stream that ends at once."""
    with new_session(engine) as session:
        registry.get_job(session, job_id)


async def _stream_job(engine: Engine, job_id: int, poll_seconds: float) -> AsyncIterator[str]:
    last_metric = last_event = 0
    last_job = ""
    last_sent = time.monotonic()
    while True:
        update = await run_in_threadpool(_read_job_update, engine, job_id, last_metric, last_event)
        if update.job is None:
            yield _sse("end", json.dumps({"job_id": job_id, "status": "deleted", "message": f"job {job_id} was deleted"}))
            return
        job_json = update.job.model_dump_json()
        if job_json != last_job:
            yield _sse("job", job_json)
            last_job = job_json
            last_sent = time.monotonic()
        if update.metrics:
            yield _sse("metrics", json.dumps([metric.model_dump(mode="json") for metric in update.metrics]))
            last_metric = update.metrics[-1].id
            last_sent = time.monotonic()
        for event in update.events:
            yield _sse("event", event.model_dump_json(), event.id)
            last_event = event.id
            last_sent = time.monotonic()
        more_waiting = len(update.metrics) == ROWS_PER_POLL or len(update.events) == ROWS_PER_POLL
        if more_waiting:
            continue
        if JobStatus(update.job.status).is_final:
            status_text = update.job.status.value
            yield _sse("end", json.dumps({"job_id": job_id, "status": status_text, "message": f"job {job_id} is {status_text}"}))
            return
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_seconds)


@router.get("/jobs/{job_id}", response_model=None, responses=STREAM_RESPONSES)
async def stream_job(request: Request, engine: EngineDep, job_id: int) -> StreamingResponse:
    """Server-Sent Events for one job: `job` (as GET /v1/jobs/{id}) when it changes, `metrics` (new logged steps), `event` (new events), and `end` once it is final."""
    await run_in_threadpool(_check_job_exists, engine, job_id)
    return StreamingResponse(
        _stream_job(engine, job_id, request.app.state.sse_poll_seconds), media_type=EVENT_STREAM_TYPE, headers=STREAM_HEADERS
    )
