"""The training worker child process: start it, stop it, kill it, and turn how it ended into the job's status.

One worker runs at a time, in its own process group (so a signal reaches the worker and anything it
spawned), with stdout and stderr appended to ``jobs/<id>/worker.log``. ``_ending`` is the one place
that maps an exit to a status.

A SIGKILL the daemon did not send, with evidence that it was for memory (``mftd.oom_evidence``), is
not a crash: the job is retried at once with a smaller micro-batch, or fails when it was at
micro-batch 1 already (``mftd.memory_retry``). Workers start with glibc settings that give freed
memory back (``protocol.worker_environment``); the memory plan may then pick a faster mmap threshold.
"""

from __future__ import annotations

import logging
import os
import signal
import site
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from sqlalchemy.engine import Engine
from sqlmodel import select

from mftd import protocol
from mftd.db import new_session
from mftd.memory_retry import MemoryVerdict, after_memory_kill
from mftd.oom_evidence import (
    MEMORY_KILL_SHARE,
    OomKillCount,
    WorkerMemory,
    oom_kills_between,
    read_oom_kill_count,
    sample_worker_memory,
)
from mftd.recovery import ORPHANED_REASON as DAEMON_STOPPED_REASON
from mftd.recovery import is_worker_process, terminate_worker
from mftd.scheduler import RunningView, backoff_delay
from mftd.settings import Settings
from mftd.status import JobStatus, set_status
from mftd.tables import Event, Job
from mftd.throttle import FULL_SPEED, THROTTLE_FILENAME, Throttle, write_throttle
from mftd.timeutil import iso_z, utcnow
from mftd.wakelock import WakeLock

log = logging.getLogger(__name__)

CommandFactory = Callable[[int, Path], list[str]]
OomKillCounter = Callable[[], Optional[OomKillCount]]
MemorySampler = Callable[[int], Optional[WorkerMemory]]

KILL_WAIT_SECONDS = 10.0


@dataclass
class _Run:
    job_id: int
    process: subprocess.Popen
    started_at: datetime
    events_before: int = 0
    stop_sent_at: Optional[datetime] = None
    stop_reason: Optional[str] = None
    kill_reason: Optional[str] = None
    shutting_down: bool = False
    throttle: Throttle = FULL_SPEED
    oom_kills_before: Optional[OomKillCount] = None
    last_memory: Optional[WorkerMemory] = None


@dataclass(frozen=True)
class Ending:
    """What a finished run makes of its job."""

    status: JobStatus
    reason: str
    counts_as_interruption: bool = False
    memory: Optional[MemoryVerdict] = None


class Supervisor:
    """Owns the one training worker process.

    Args:
        engine: the daemon's database engine.
        settings: data dir, stop grace, worker interpreter.
        command_factory: ``(job_id, data_dir) -> argv``; default ``protocol.worker_command``.
        wake_lock: held while a worker runs; default Termux's, if ``settings.wake_lock``.
        oom_kill_counter: reads the kernel's OOM kill count; default ``read_oom_kill_count``.
        memory_sampler: ``pid -> WorkerMemory``, sampled each poll where no OOM kill count can be read;
            default ``sample_worker_memory``.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        command_factory: Optional[CommandFactory] = None,
        wake_lock: Optional[WakeLock] = None,
        oom_kill_counter: Optional[OomKillCounter] = None,
        memory_sampler: Optional[MemorySampler] = None,
    ):
        self.engine = engine
        self.settings = settings
        self.command_factory = command_factory or (
            lambda job_id, data_dir: protocol.worker_command(job_id, data_dir, settings.worker_python)
        )
        self.wake_lock = wake_lock or WakeLock(enabled=settings.wake_lock)
        self.oom_kill_counter = oom_kill_counter or read_oom_kill_count
        self.memory_sampler = memory_sampler or sample_worker_memory
        self._run: Optional[_Run] = None

    @property
    def running_job_id(self) -> Optional[int]:
        return self._run.job_id if self._run else None

    def running_view(self) -> Optional[RunningView]:
        if self._run is None:
            return None
        return RunningView(self._run.job_id, self._run.started_at, self._run.stop_sent_at)

    def start(self, job_id: int, now: Optional[datetime] = None) -> None:
        """Mark the job running and start its worker.

        Raises:
            RuntimeError: a worker is already running.
            InvalidTransitionError: the job cannot become running from its status.
        """
        if self._run is not None:
            raise RuntimeError(f"cannot start job {job_id}: the worker of job {self._run.job_id} is still running")
        now = now or utcnow()
        with new_session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise LookupError(f"job {job_id} does not exist")
            job.heartbeat_at = now
            job.not_before = None
            set_status(session, job, JobStatus.RUNNING)
            events_before = _newest_event_id(session, job_id)
            command = self.command_factory(job_id, self.settings.data_dir)
            (self.settings.job_dir(job_id) / THROTTLE_FILENAME).unlink(missing_ok=True)  # a new run starts at full speed
            self.wake_lock.acquire()
            oom_kills_before = self.oom_kill_counter()
            try:
                process = self._spawn(job_id, command, now)
            except OSError as error:
                set_status(
                    session,
                    job,
                    JobStatus.FAILED,
                    f"could not start the training worker ({' '.join(command)}): {error}; check MFTD_WORKER_PYTHON",
                )
                self.wake_lock.release()
                return
            job.worker_pid = process.pid
            session.add(job)
            session.commit()
        self._run = _Run(
            job_id=job_id, process=process, started_at=now, events_before=events_before, oom_kills_before=oom_kills_before
        )
        log.info("job %s: worker started (pid %s)", job_id, process.pid)

    def stop(self, job_id: int, reason: str, request: Optional[str] = None, now: Optional[datetime] = None) -> None:
        """Ask the worker to checkpoint and exit (SIGTERM), once; it is killed if it takes longer than the grace."""
        run = self._run
        if run is None or run.job_id != job_id or run.stop_sent_at is not None:
            return
        now = now or utcnow()
        with new_session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is not None and request and not job.stop_request:
                job.stop_request = request
                session.add(job)
            session.add(Event(job_id=job_id, kind="stop", message=f"stopping the worker: {reason}", created_at=now))
            session.commit()
        run.stop_sent_at = now
        run.stop_reason = reason
        self._signal(run, signal.SIGTERM)
        log.info("job %s: asked the worker to stop (%s)", job_id, reason)

    def set_throttle(self, job_id: int, throttle: Throttle, now: Optional[datetime] = None) -> None:
        """Tell the running worker to train ``throttle.duty_cycle`` of the time; it reads this between optimizer steps."""
        run = self._run
        if run is None or run.job_id != job_id or run.stop_sent_at is not None or throttle == run.throttle:
            return
        try:
            write_throttle(self.settings.job_dir(job_id) / THROTTLE_FILENAME, throttle)
        except OSError as error:
            log.warning("job %s: could not write the throttle: %s", job_id, error)
            return
        if throttle.is_throttled != run.throttle.is_throttled:
            message = f"slowing down: {throttle.reason}" if throttle.is_throttled else "back to full speed: the battery cooled below the soft limit"
            with new_session(self.engine) as session:
                session.add(Event(job_id=job_id, kind="throttle", message=message, created_at=now or utcnow()))
                session.commit()
            log.info("job %s: %s", job_id, message)
        run.throttle = throttle

    def kill(self, job_id: int, reason: str, now: Optional[datetime] = None) -> None:
        """SIGKILL the worker of ``job_id`` and settle the job; a running job without our worker becomes interrupted."""
        run = self._run
        if run is None or run.job_id != job_id:
            self._release_foreign(job_id, reason, now or utcnow())
            return
        if run.kill_reason is None:
            run.kill_reason = reason
            log.warning("job %s: killing the worker: %s", job_id, reason)
        self._signal(run, signal.SIGKILL)
        try:
            run.process.wait(timeout=KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("job %s: the worker (pid %s) survived SIGKILL for %g s", job_id, run.process.pid, KILL_WAIT_SECONDS)
            return
        self.poll(now)

    def poll(self, now: Optional[datetime] = None) -> Optional[JobStatus]:
        """If the worker has exited, settle its job and return the job's new status."""
        run = self._run
        if run is None:
            return None
        if run.process.poll() is None:
            if run.oom_kills_before is None:
                run.last_memory = self.memory_sampler(run.process.pid) or run.last_memory
            return None
        self._run = None
        now = now or utcnow()
        code = run.process.returncode
        _kill_leftovers(run.process.pid)
        self.wake_lock.release()
        with new_session(self.engine) as session:
            job = session.get(Job, run.job_id)
            if job is None:
                log.warning("job %s: worker exited with %s but the job no longer exists", run.job_id, code)
                return None
            if job.status != JobStatus.RUNNING:
                log.warning("job %s: worker exited with %s while the job was %s; left as it is", job.id, code, job.status)
                return JobStatus(job.status)
            error_message = _newest_error(session, job.id, run.events_before)
            if error_message is None and code in (protocol.EXIT_FAILED, protocol.EXIT_BAD_CONFIG):
                error_message = _unrecorded_error_text(code, job.id, self.settings.job_dir(job.id))
            killer = _memory_killer(code, run, self.oom_kill_counter())
            memory = after_memory_kill(job.memory_plan_json, job.micro_batch_cap, killer) if killer else None
            ending = _ending(code, job.stop_request, run, error_message, killer, memory)
            if ending.memory is not None:
                _record_memory_verdict(session, job, ending.memory, now)
            if ending.counts_as_interruption:
                made_progress = job.interrupted_at_step is not None and job.step > job.interrupted_at_step
                job.interruptions = 1 if made_progress else job.interruptions + 1
                job.interrupted_at_step = job.step
                job.not_before = now + backoff_delay(job.interruptions)
                reason = f"{ending.reason} (interruption {job.interruptions}; retrying after {iso_z(job.not_before)})"
            else:
                reason = ending.reason
            job.heartbeat_at = None
            set_status(session, job, ending.status, reason)
        log.info("job %s: worker exited with %s -> %s", run.job_id, code, ending.status.value)
        return ending.status

    def shutdown(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after the grace) and settle its job, for a clean daemon exit."""
        run = self._run
        if run is None:
            return
        run.shutting_down = True
        if run.stop_sent_at is None:
            run.stop_sent_at = utcnow()
            self._signal(run, signal.SIGTERM)
        log.info("job %s: waiting up to %g s for the worker to checkpoint", run.job_id, self.settings.stop_grace_seconds)
        try:
            run.process.wait(timeout=self.settings.stop_grace_seconds)
        except subprocess.TimeoutExpired:
            run.kill_reason = run.kill_reason or f"the worker did not stop within {self.settings.stop_grace_seconds:g} s while the daemon was stopping"
            self._signal(run, signal.SIGKILL)
            try:
                run.process.wait(timeout=KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("job %s: the worker survived SIGKILL; leaving it for start-up recovery", run.job_id)
                return
        self.poll()

    def _spawn(self, job_id: int, command: list[str], now: datetime) -> subprocess.Popen:
        job_dir = self.settings.job_dir(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        env = protocol.worker_environment(dict(os.environ, MFTD_DATA_DIR=str(self.settings.data_dir)))
        env["PYTHONPATH"] = _pythonpath_with_project(env.get("PYTHONPATH", ""))
        with open(job_dir / protocol.WORKER_LOG_FILENAME, "ab") as log_file:
            log_file.write(f"\n=== {iso_z(now)} worker started: {' '.join(command)}\n".encode())
            log_file.flush()
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _signal(self, run: _Run, signum: int) -> None:
        if run.process.poll() is not None:
            return
        try:
            os.killpg(run.process.pid, signum)
        except ProcessLookupError:
            pass

    def _release_foreign(self, job_id: int, reason: str, now: datetime) -> None:
        with new_session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None or job.status != JobStatus.RUNNING:
                return
            if job.worker_pid and is_worker_process(job.worker_pid, job_id):
                terminate_worker(job.worker_pid, grace_seconds=0)
            job.heartbeat_at = None
            set_status(session, job, JobStatus.INTERRUPTED, f"{reason}; resumes from its last checkpoint")


def _kill_leftovers(process_group: int) -> None:
    """Processes the worker started (in its group) must not outlive it and hold on to memory."""
    try:
        os.killpg(process_group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _ending(
    code: int,
    stop_request: Optional[str],
    run: _Run,
    error_message: Optional[str],
    memory_killer: Optional[str] = None,
    memory: Optional[MemoryVerdict] = None,
) -> Ending:
    """How a worker's exit code, the job's stop request and a memory kill decide the job's new status.

    A memory kill with a plan to shrink does not count as an interruption: it is not the kind of
    crash the retry budget is for, and each retry lowers the micro-batch, so the retries end.
    """
    failed_text = error_message or f"the worker exited with code {code}"
    match code, stop_request:
        case protocol.EXIT_SUCCEEDED, _:
            return Ending(JobStatus.SUCCEEDED, "")
        case protocol.EXIT_STOPPED, "pause":
            return Ending(JobStatus.PAUSED, "paused by the user; resume it to continue from its last checkpoint")
        case protocol.EXIT_STOPPED, "cancel":
            return Ending(JobStatus.CANCELLED, "cancelled by the user")
        case protocol.EXIT_STOPPED, "device":
            return Ending(JobStatus.WAITING, run.stop_reason or "waiting for the device to allow training")
        case protocol.EXIT_STOPPED, _:
            if run.shutting_down:
                return Ending(JobStatus.INTERRUPTED, DAEMON_STOPPED_REASON)
            return Ending(JobStatus.INTERRUPTED, "the worker was stopped from outside mftd; it resumes from its last checkpoint")
        case protocol.EXIT_BAD_CONFIG, _:
            return Ending(JobStatus.FAILED, f"the job cannot run as configured: {failed_text}")
        case protocol.EXIT_FAILED, _:
            return Ending(JobStatus.FAILED, failed_text)
        case _, "cancel":
            return Ending(JobStatus.CANCELLED, f"cancelled by the user ({_how_it_died(code, run)})")
        case _, "pause":
            return Ending(JobStatus.PAUSED, f"paused by the user ({_how_it_died(code, run)}); resumes from its last checkpoint")
        case _, _ if run.shutting_down:
            return Ending(JobStatus.INTERRUPTED, f"{DAEMON_STOPPED_REASON} ({_how_it_died(code, run)})")
        case _, _ if memory is not None and memory.is_retry:
            return Ending(JobStatus.INTERRUPTED, memory.status_reason, memory=memory)
        case _, _ if memory is not None:
            return Ending(JobStatus.FAILED, memory.status_reason, memory=memory)
        case _:
            return Ending(JobStatus.INTERRUPTED, _how_it_died(code, run, memory_killer), counts_as_interruption=True)


def _memory_killer(code: int, run: _Run, oom_kills_now: Optional[OomKillCount]) -> Optional[str]:
    """Who killed the worker for memory, for people; None when it did not die of a SIGKILL for memory.

    A SIGKILL the daemon sent (``run.kill_reason``) is never a memory kill. Otherwise an OOM kill
    count that grew while the worker ran decides; only where no count can be read does the worker's
    last sampled share of memory stand in for it.
    """
    if code != -signal.SIGKILL or run.kill_reason is not None:
        return None
    grew = oom_kills_between(run.oom_kills_before, oom_kills_now)
    if grew is not None:
        return "the out-of-memory killer" if grew > 0 else None
    memory = run.last_memory
    if memory is not None and memory.share >= MEMORY_KILL_SHARE:
        return (
            f"probably the low-memory killer: it held {memory.rss_mb:,.0f} MB with {memory.available_mb:,.0f} MB "
            "still available when last seen"
        )
    return None


def _record_memory_verdict(session, job: Job, memory: MemoryVerdict, now: datetime) -> None:
    """Lower the job's micro-batch cap for the retry, and tell people why."""
    if memory.is_retry:
        job.micro_batch_cap = memory.micro_batch_cap
    level = "warning" if memory.is_retry else "error"
    session.add(Event(job_id=job.id, kind="memory", level=level, message=memory.event_message, created_at=now))


def _how_it_died(code: int, run: _Run, memory_killer: Optional[str] = None) -> str:
    if run.kill_reason:
        return f"{run.kill_reason}; the worker was killed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL and memory_killer:
            return f"killed by {name} for memory ({memory_killer}); the job has no memory plan to shrink"
        if -code == signal.SIGKILL:
            return f"killed by {name} — possibly the out-of-memory killer or Android's phantom process killer"
        return f"killed by {name}"
    return f"the worker exited with unexpected code {code}"


def _unrecorded_error_text(code: int, job_id: int, job_dir: Path) -> str:
    log_name = f"jobs/{job_id}/{protocol.WORKER_LOG_FILENAME}"
    last_line = _last_line(job_dir / protocol.WORKER_LOG_FILENAME)
    said = f"; its last words: {last_line}" if last_line else ""
    return f"the worker exited with code {code} without recording an error{said} (see {log_name})"


def _last_line(path: Path, max_bytes: int = 4096) -> Optional[str]:
    try:
        with open(path, "rb") as file:
            file.seek(max(0, path.stat().st_size - max_bytes))
            lines = [line.strip() for line in file.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def _newest_event_id(session, job_id: int) -> int:
    statement = select(Event.id).where(Event.job_id == job_id).order_by(Event.id.desc()).limit(1)
    return session.exec(statement).first() or 0


def _newest_error(session, job_id: int, after_event_id: int) -> Optional[str]:
    """The message of the newest error event this run wrote."""
    statement = (
        select(Event)
        .where(Event.job_id == job_id, Event.kind == "error", Event.id > after_event_id)
        .order_by(Event.id.desc())
        .limit(1)
    )
    event = session.exec(statement).first()
    return event.message if event else None


def _pythonpath_with_project(pythonpath: str) -> str:
    """Make ``jobs`` importable in the worker when mftd runs from a source checkout rather than an install."""
    project_root = str(Path(__file__).resolve().parent.parent)
    installed = {str(Path(path).resolve()) for path in site.getsitepackages() + [site.getusersitepackages()]}
    entries = [entry for entry in pythonpath.split(os.pathsep) if entry]
    if project_root in installed or project_root in entries:
        return pythonpath
    return os.pathsep.join([project_root, *entries])
