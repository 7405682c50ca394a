"""What the worker tells the daemon and people, through SQLite: events, metrics, progress, heartbeats.

The worker never writes ``job.status`` (only the daemon does, through ``mftd.status.set_status``);
it updates progress columns with plain UPDATEs. Every event is also a log line on stdout, which the
daemon redirects to ``jobs/<id>/worker.log``.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Optional

import psutil
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine

from mftd.db import new_session
from mftd.protocol import HEARTBEAT_SECONDS
from mftd.tables import Checkpoint, Event, Job, Metric
from mftd.timeutil import utcnow

logger = logging.getLogger(__name__)

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JobReporter:
    """Writes one job's events, metrics, progress and checkpoint rows."""

    def __init__(self, engine: Engine, job_id: int):
        self.engine = engine
        self.job_id = job_id
        self._process = psutil.Process()

    def event(self, message: str, level: str = "info", kind: str = "log", data: Optional[dict[str, Any]] = None) -> None:
        """Record an event for people (and log it)."""
        logger.log(LOG_LEVELS.get(level, logging.INFO), "%s", message)
        with new_session(self.engine) as session:
            session.add(
                Event(job_id=self.job_id, level=level, kind=kind, message=message, data_json=json.dumps(data) if data is not None else None)
            )
            session.commit()

    def progress(self, step: int, total_steps: int, loss: Optional[float], tokens_seen: Optional[int] = None) -> None:
        """Set the job's step, total steps, last loss and tokens trained on, and refresh its heartbeat."""
        now = utcnow()
        values = dict(step=step, total_steps=total_steps, loss=loss, heartbeat_at=now, updated_at=now)
        if tokens_seen is not None:
            values["tokens_seen"] = tokens_seen  # the daemon's energy per 1,000 tokens counts these
        with new_session(self.engine) as session:
            session.exec(update(Job).where(Job.id == self.job_id).values(**values))
            session.commit()

    def memory_plan(self, plan: dict[str, Any]) -> None:
        """Show the job's memory plan (and, after the run, its measured peak) on its row."""
        with new_session(self.engine) as session:
            session.exec(update(Job).where(Job.id == self.job_id).values(memory_plan_json=json.dumps(plan), updated_at=utcnow()))
            session.commit()

    def heartbeat(self) -> None:
        with new_session(self.engine) as session:
            session.exec(update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow()))
            session.commit()

    def metric(
        self, step: int, loss: float, learning_rate: float, grad_norm: float, tokens: int, tokens_per_second: float
    ) -> None:
        """Record one optimizer step's training metrics, with the worker's resident memory."""
        with new_session(self.engine) as session:
            session.add(
                Metric(
                    job_id=self.job_id,
                    step=step,
                    split="train",
                    loss=loss,
                    learning_rate=learning_rate,
                    grad_norm=grad_norm,
                    tokens=tokens,
                    tokens_per_second=tokens_per_second,
                    rss_mb=self._process.memory_info().rss / 2**20,
                )
            )
            session.commit()

    def eval_metric(self, step: int, loss: float, perplexity: float, tokens: int) -> None:
        """Record a validation loss and perplexity after optimizer step ``step``."""
        with new_session(self.engine) as session:
            session.add(Metric(job_id=self.job_id, step=step, split="eval", loss=loss, perplexity=perplexity, tokens=tokens))
            session.commit()

    def forget_metrics_after(self, step: int) -> None:
        """Delete training and eval metrics of steps after ``step``: a resumed run logs those steps again."""
        with new_session(self.engine) as session:
            session.exec(delete(Metric).where(Metric.job_id == self.job_id, Metric.step > step))
            session.commit()

    def checkpoints_removed(self, removed: list[Path]) -> None:
        """Forget the rows of deleted checkpoint folders."""
        with new_session(self.engine) as session:
            self._delete_checkpoint_rows(session, removed)
            session.commit()

    def checkpoints_changed(self, written: Path, step: int, size_bytes: int, removed: list[Path]) -> None:
        """Record a new checkpoint folder and forget the rows of deleted ones."""
        with new_session(self.engine) as session:
            self._delete_checkpoint_rows(session, [*removed, written])  # a rewrite of the same step replaces its row
            session.add(Checkpoint(job_id=self.job_id, step=step, path=str(written), size_bytes=size_bytes))
            session.add(
                Event(
                    job_id=self.job_id,
                    kind="checkpoint",
                    message=f"checkpoint saved at step {step} ({size_bytes / 2**20:.1f} MB)",
                    data_json=json.dumps({"step": step, "path": str(written), "removed": [str(path) for path in removed]}),
                )
            )
            session.commit()
        logger.info("checkpoint saved at step %d in %s", step, written)

    def _delete_checkpoint_rows(self, session, folders: list[Path]) -> None:
        paths = [str(folder) for folder in folders]
        session.exec(delete(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.path.in_(paths)))


class Heartbeat:
    """A background thread that refreshes ``job.heartbeat_at`` every ``HEARTBEAT_SECONDS``, even while the model loads."""

    def __init__(self, reporter: JobReporter, interval_seconds: float = HEARTBEAT_SECONDS):
        self._reporter = reporter
        self._interval = interval_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc_info) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self._reporter.heartbeat()
            except Exception as error:  # a busy or locked database must not kill the heartbeat
                logger.warning("heartbeat not written: %s", error)
            if self._stopped.wait(self._interval):
                return
