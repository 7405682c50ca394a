"""What a job produces: events (JSON or Server-Sent Events), metrics, checkpoints and artifacts."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Optional

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlalchemy.engine import Engine

from api.deps import EngineDep, SessionDep, SettingsDep
from api.schemas import ArtifactPublic, CheckpointPublic, EventPublic, MetricPublic
from mftd import registry
from mftd.db import new_session
from mftd.errors import NotFoundError
from mftd.registry import MAX_ID
from mftd.status import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

EVENT_STREAM_TYPE = "text/event-stream"
EVENTS_PER_POLL = 1000
KEEPALIVE_SECONDS = 15.0
ZIP_CHUNK_BYTES = 1 << 20


def _read_events(
    engine: Engine, job_id: int, after_id: int, must_exist: bool = False
) -> tuple[Optional[JobStatus], list[EventPublic]]:
    """The job's status (None once deleted), read before its events so a final status comes with its last events."""
    with new_session(engine) as session:
        try:
            job = registry.get_job(session, job_id)
        except NotFoundError:
            if must_exist:
                raise
            return None, []
        status = JobStatus(job.status)
        events = registry.list_events(session, job_id, after_id, EVENTS_PER_POLL)
        return status, [EventPublic.from_row(event) for event in events]


def _sse_message(event: EventPublic) -> str:
    return f"id: {event.id}\ndata: {event.model_dump_json()}\n\n"


async def _stream_events(engine: Engine, job_id: int, after_id: int, poll_seconds: float) -> AsyncIterator[str]:
    last_id = after_id
    last_sent = time.monotonic()
    while True:
        status, events = await run_in_threadpool(_read_events, engine, job_id, last_id)
        for event in events:
            yield _sse_message(event)
            last_id = event.id
            last_sent = time.monotonic()
        if len(events) == EVENTS_PER_POLL:
            continue
        if status is None or status.is_final:
            # A named event, so a browser's EventSource can close instead of reconnecting.
            status_text = status.value if status is not None else "deleted"
            end = {"kind": "end", "level": "info", "job_id": job_id, "status": status_text, "message": f"job {job_id} is {status_text}; the stream ends"}
            yield f"event: end\ndata: {json.dumps(end)}\n\n"
            return
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_seconds)


@router.get(
    "/{job_id}/events",
    response_model=list[EventPublic],
    responses={200: {"content": {EVENT_STREAM_TYPE: {}}, "description": "With Accept: text/event-stream, a live stream until the job is final."}},
)
async def read_events(
    request: Request,
    engine: EngineDep,
    job_id: int,
    after: int = Query(0, ge=0, le=MAX_ID, description="Only events with a larger id."),
    accept: Annotated[str, Header()] = "",
    last_event_id: Annotated[Optional[int], Header(ge=0, le=MAX_ID, description="Set by EventSource on reconnect; wins over after.")] = None,
):
    """The job's events, oldest first; as Server-Sent Events if asked for."""
    _status, events = await run_in_threadpool(_read_events, engine, job_id, after, True)
    if EVENT_STREAM_TYPE not in accept:
        return events
    start_after = last_event_id if last_event_id is not None else after
    return StreamingResponse(
        _stream_events(engine, job_id, start_after, request.app.state.sse_poll_seconds),
        media_type=EVENT_STREAM_TYPE,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{job_id}/metrics", response_model=list[MetricPublic])
def read_metrics(session: SessionDep, job_id: int, split: Optional[str] = Query(None, pattern="^(train|eval)$")) -> list[MetricPublic]:
    """The job's logged steps (loss, learning rate, throughput, memory), oldest first."""
    return [MetricPublic.model_validate(metric) for metric in registry.list_metrics(session, job_id, split)]


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointPublic])
def read_checkpoints(session: SessionDep, job_id: int) -> list[CheckpointPublic]:
    """The job's complete checkpoints, oldest first."""
    return [CheckpointPublic.model_validate(checkpoint) for checkpoint in registry.list_checkpoints(session, job_id)]


@router.get("/{job_id}/artifacts", response_model=list[ArtifactPublic])
def read_artifacts(session: SessionDep, settings: SettingsDep, job_id: int) -> list[ArtifactPublic]:
    """The job's outputs (adapter/, model/, config.json, worker.log, ...) with download URLs."""
    return [ArtifactPublic.from_artifact(job_id, artifact) for artifact in registry.list_artifacts(session, settings, job_id)]


class _ChunkSink(io.RawIOBase):
    """An unseekable file that collects what zipfile writes, to be handed out in chunks."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


def _zip_folder(folder: Path) -> Iterator[bytes]:
    """A zip of ``folder``'s contents, built while it is sent.

    Paths are relative to the folder, so ``unzip x.zip -d my-adapter`` gives a folder that
    ``PeftModel.from_pretrained`` loads. Stored, not compressed: weights hardly compress.
    """
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in sorted(folder.rglob("*")):
            if not file.is_file() or file.is_symlink():
                continue
            arcname = file.relative_to(folder).as_posix()
            with open(file, "rb") as source, archive.open(arcname, "w", force_zip64=True) as target:
                while chunk := source.read(ZIP_CHUNK_BYTES):
                    target.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()


@router.get(
    "/{job_id}/artifacts/{artifact_path:path}",
    response_model=None,
    responses={200: {"content": {"application/octet-stream": {}, "application/zip": {}}, "description": "The file, or a folder as a zip."}},
)
def download_artifact(session: SessionDep, settings: SettingsDep, job_id: int, artifact_path: str) -> Response:
    """One artifact: a file as it is, a folder as a zip."""
    target = registry.artifact_path(session, settings, job_id, artifact_path)
    if target.is_dir():
        filename = f"job-{job_id}-{target.name}.zip"
        return StreamingResponse(
            _zip_folder(target),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return FileResponse(target, filename=target.name)
