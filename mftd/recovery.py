"""Start-up recovery: jobs the database says are running, but whose daemon is gone.

The daemon that started them stopped without settling them (a crash, a reboot, SIGKILL). Their
worker is gone, or it is still training unsupervised; either way the job becomes interrupted
and resumes from its last checkpoint. This is not the worker's fault, so it does not count
against the job's retry budget.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable, Optional

import psutil
from sqlmodel import Session, select

from mftd import protocol
from mftd.settings import Settings
from mftd.status import JobStatus, set_status
from mftd.tables import Job

log = logging.getLogger(__name__)

ORPHANED_REASON = "the daemon stopped while this job was running; it resumes from its last checkpoint"

WorkerCheck = Callable[[int, int], bool]


def is_worker_process(pid: int, job_id: int) -> bool:
    """True if ``pid`` is alive and runs ``python -m jobs.worker <job_id>`` (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    for index in range(len(argv) - 2):
        if argv[index] == "-m" and argv[index + 1] == protocol.WORKER_MODULE and argv[index + 2] == str(job_id):
            return True
    return False


def terminate_worker(pid: int, grace_seconds: float) -> None:
    """SIGTERM the worker (and its process group), wait up to ``grace_seconds`` for it to checkpoint, then SIGKILL."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    if grace_seconds > 0:
        _send(pid, signal.SIGTERM)
        if _wait_gone(process, grace_seconds):
            return
        log.warning("worker pid %s did not stop within %g s; killing it", pid, grace_seconds)
    _send(pid, signal.SIGKILL)
    if not _wait_gone(process, 10):
        log.error("worker pid %s survived SIGKILL", pid)


def _wait_gone(process: psutil.Process, timeout: float) -> bool:
    """Wait for a process that is not our child to exit; a zombie counts as gone (its parent may never reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _send(pid: int, signum: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def recover_orphaned_jobs(
    session: Session,
    settings: Settings,
    is_worker_alive: Optional[WorkerCheck] = None,
) -> list[int]:
    """Settle the jobs left running by a daemon that is gone.

    A still-running worker of such a job is stopped first (SIGTERM, so it checkpoints; SIGKILL
    after ``settings.stop_grace_seconds``). A job the user had asked to pause or cancel becomes
    paused or cancelled; any other becomes interrupted, without counting as an interruption.

    Args:
        session: a database session.
        settings: for the stop grace.
        is_worker_alive: ``(pid, job_id) -> bool``; default ``is_worker_process``.

    Returns:
        The ids of the jobs it settled.
    """
    is_worker_alive = is_worker_alive or is_worker_process
    recovered: list[int] = []
    for job in session.exec(select(Job).where(Job.status == JobStatus.RUNNING).order_by(Job.id)).all():
        if job.worker_pid and is_worker_alive(job.worker_pid, job.id):
            log.warning("job %s: its worker (pid %s) outlived the daemon; stopping it", job.id, job.worker_pid)
            terminate_worker(job.worker_pid, settings.stop_grace_seconds)
        new_status, reason = _fate(job.stop_request)
        job.heartbeat_at = None
        set_status(session, job, new_status, reason)
        log.info("job %s: %s after a daemon restart", job.id, new_status.value)
        recovered.append(job.id)
    return recovered


def _fate(stop_request: Optional[str]) -> tuple[JobStatus, str]:
    match stop_request:
        case "pause":
            return JobStatus.PAUSED, "paused by the user (settled after a daemon restart); resumes from its last checkpoint"
        case "cancel":
            return JobStatus.CANCELLED, "cancelled by the user (settled after a daemon restart)"
        case _:
            return JobStatus.INTERRUPTED, ORPHANED_REASON
