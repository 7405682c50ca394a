"""The daemon: recovery at start-up, the scheduler tick, and the HTTP API, in one small process.

``serve`` is the entry point. ``Daemon.tick`` is one look at the queue: settle a finished
worker, read the device and judge every job's constraints, account the running job's energy,
``decide``, apply, and pass the thermal throttle on. FastAPI and uvicorn are imported inside
``serve`` so the CLI's client commands start fast.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import psutil
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import select

from mftd.db import make_engine, new_session
from mftd.device import DeviceMonitor, DeviceState, publish_device_state
from mftd.energy import EnergySample, energy_between
from mftd.errors import ConflictError, RemoteHostRefusedError
from mftd.model_import import fail_unfinished_imports
from mftd.recovery import recover_orphaned_jobs
from mftd.scheduler import DEVICE_STOP_REQUEST, Action, FailJob, JobView, KillJob, Limits, StartJob, StopJob, decide
from mftd.settings import Settings, is_loopback_host
from mftd.status import FINAL_STATUSES, JobStatus, set_status
from mftd.supervisor import Supervisor
from mftd.tables import Event, Job
from mftd.timeutil import utcnow

log = logging.getLogger(__name__)

TICK_JOB_ID = "tick"
DAEMON_INFO_FILENAME = "daemon.json"
LOCK_FILENAME = "daemon.lock"
GRACEFUL_HTTP_SHUTDOWN_SECONDS = 5
SETTLE_NAME = "settle"


class Daemon:
    """The scheduler side of the daemon: the tick, the supervisor, and the APScheduler that drives them.

    Args:
        settings: the daemon's settings.
        engine: the database engine.
        supervisor: default one built from ``settings``.
        monitor: reads the sensors and judges the jobs' constraints; tests give it scripted sensors.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        supervisor: Optional[Supervisor] = None,
        monitor: Optional[DeviceMonitor] = None,
    ):
        self.settings = settings
        self.engine = engine
        self.supervisor = supervisor or Supervisor(engine, settings)
        self.monitor = monitor or DeviceMonitor(settings)
        self.limits = Limits.from_settings(settings)
        self.device: Optional[DeviceState] = None
        self._energy_sample: Optional[tuple[int, EnergySample]] = None
        self._blocked: dict[int, tuple[str, ...]] = {}
        self._tick_lock = threading.Lock()
        self._poked_during_tick = False
        self._scheduler = None

    def tick(self, now: Optional[datetime] = None) -> list[Action]:
        """Look at the queue once and act. Never raises: a failure is logged and the next tick tries again."""
        with self._tick_lock:
            actions = self._guarded_tick(now)
            while self._poked_during_tick and now is None:  # a change arrived mid-tick: look again now
                self._poked_during_tick = False
                actions += self._guarded_tick(None)
            return actions

    def _guarded_tick(self, now: Optional[datetime]) -> list[Action]:
        try:
            return self._tick(now)
        except Exception:
            log.exception("scheduler tick failed")
            return []

    def _tick(self, now: Optional[datetime]) -> list[Action]:
        now = now or utcnow()
        self.supervisor.poll(now)
        with new_session(self.engine) as session:
            jobs = session.exec(select(Job).where(Job.status.not_in(list(FINAL_STATUSES)))).all()
            views = [JobView.of(job) for job in jobs]
        device = self.monitor.observe(views, now)
        self.device = device
        publish_device_state(self.settings.data_dir, device)
        self._account_energy(views, device, now)
        actions = decide(views, device, now, self.supervisor.running_view(), self.limits)
        for action in actions:
            try:
                self._apply(action, now)
            except Exception:
                log.exception("could not apply %s", action)
        self._record_blocked_jobs(views, device, actions, now)
        running_job_id = self.supervisor.running_job_id
        if running_job_id is not None:
            self.supervisor.set_throttle(running_job_id, device.verdict_for(running_job_id).throttle, now)
        return actions

    def _account_energy(self, views: list[JobView], device: DeviceState, now: datetime) -> None:
        """Integrate the battery power and count the battery used since the last tick, for the job training now."""
        job_id = self.supervisor.running_job_id
        view = next((view for view in views if view.id == job_id and view.status == JobStatus.RUNNING), None)
        if view is None:
            self._energy_sample = None
            return
        sample = EnergySample(
            at=now,
            power_w=device.value("battery_power_w"),
            charging=device.value("charging"),
            battery_percent=device.value("battery_percent"),
            tokens_seen=view.tokens_seen,
        )
        previous, self._energy_sample = self._energy_sample, (view.id, sample)
        if previous is None or previous[0] != view.id:
            return
        delta = energy_between(previous[1], sample, max_gap_seconds=max(120.0, 10 * self.settings.tick_seconds))
        if delta.is_empty:
            return
        with new_session(self.engine) as session:
            session.exec(
                update(Job)
                .where(Job.id == view.id)
                .values(
                    energy_mwh=Job.energy_mwh + delta.energy_mwh,
                    energy_seconds=Job.energy_seconds + delta.energy_seconds,
                    energy_tokens=Job.energy_tokens + delta.energy_tokens,
                    battery_percent_used=Job.battery_percent_used + delta.battery_percent_used,
                )
            )
            session.commit()

    def _record_blocked_jobs(self, views: list[JobView], device: DeviceState, actions: list[Action], now: datetime) -> None:
        """An event when what holds a job back changes (not on every tick: the values move, the reasons rarely)."""
        for action in actions:
            if isinstance(action, StopJob) and action.request == DEVICE_STOP_REQUEST:
                self._blocked[action.job_id] = _blocking_names(device, action.job_id)  # the stop event said it
        started = {action.job_id for action in actions if isinstance(action, StartJob)}
        with new_session(self.engine) as session:
            for view in views:
                if not view.status.is_resumable or view.id in started:
                    continue
                verdict = device.verdict_for(view.id)
                names = () if verdict.allowed else _blocking_names(device, view.id)
                if names and names != self._blocked.get(view.id):
                    message = "waiting for the device: " + "; ".join(verdict.reasons)
                    session.add(Event(job_id=view.id, kind="device", message=message, created_at=now))
                self._blocked[view.id] = names
            session.commit()
        present = {view.id for view in views}
        self._blocked = {job_id: names for job_id, names in self._blocked.items() if job_id in present}

    def _apply(self, action: Action, now: datetime) -> None:
        match action:
            case StartJob(job_id):
                self.supervisor.start(job_id, now)
            case StopJob(job_id, reason, request):
                self.supervisor.stop(job_id, reason, request, now)
            case KillJob(job_id, reason):
                self.supervisor.kill(job_id, reason, now)
            case FailJob(job_id, reason):
                with new_session(self.engine) as session:
                    job = session.get(Job, job_id)
                    if job is not None and job.status == JobStatus.INTERRUPTED:
                        set_status(session, job, JobStatus.FAILED, reason)

    def start_scheduler(self) -> None:
        """Run ``tick`` every ``settings.tick_seconds`` in a background thread, starting now."""
        from apscheduler.schedulers.background import BackgroundScheduler

        # A tick that outlasts the interval is expected (a worker being killed); APScheduler would warn each time.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = BackgroundScheduler(timezone=timezone.utc)
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.settings.tick_seconds,
            id=TICK_JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(timezone.utc),
        )
        scheduler.start()
        self._scheduler = scheduler

    def poke(self) -> None:
        """Run a tick soon (something changed: a new job, a pause, a resume)."""
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running:
            return
        if self._tick_lock.locked():
            self._poked_during_tick = True  # APScheduler would skip a second instance; the running tick repeats
            return
        try:
            scheduler.modify_job(TICK_JOB_ID, next_run_time=datetime.now(timezone.utc))
        except Exception:  # the scheduler is shutting down
            log.debug("poke ignored", exc_info=True)

    def shutdown(self) -> None:
        """Stop ticking (waiting for a tick in progress), then stop the worker so its job resumes on the next start."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        self.supervisor.shutdown()


def _blocking_names(device: DeviceState, job_id: int) -> tuple[str, ...]:
    verdict = device.verdict_for(job_id)
    names = tuple(check.constraint for check in verdict.checks if not check.holds)
    return names or ((SETTLE_NAME,) if not verdict.allowed else ())


def serve(settings: Settings) -> None:
    """Run the daemon until SIGTERM or SIGINT.

    Raises:
        RemoteHostRefusedError: ``settings.host`` is not loopback and ``allow_remote`` is off.
        ConflictError: another daemon holds the data dir's lock.
        OSError: the address is in use.
    """
    check_host_allowed(settings)
    settings.ensure_dirs()
    lock = _lock_data_dir(settings.data_dir)

    from mftd.token import load_or_create_token

    load_or_create_token(settings.token_path)
    engine = make_engine(settings.db_path)
    with new_session(engine) as session:
        recovered = recover_orphaned_jobs(session, settings)
    if recovered:
        log.info("settled jobs left running by the previous daemon: %s", ", ".join(map(str, recovered)))
    if fail_unfinished_imports(engine):
        log.info("marked GGUF imports left unfinished by the previous daemon as failed")

    listener = _bind(settings.host, settings.port)
    port = listener.getsockname()[1]
    url = client_url(settings.host, port)

    daemon = Daemon(settings, engine)
    stop_requested = threading.Event()
    server = None

    def _on_signal(signum, _frame):
        stop_requested.set()
        if server is not None:
            server.should_exit = True

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    info_path = settings.data_dir / DAEMON_INFO_FILENAME
    try:
        import uvicorn

        from api.main import create_app

        app = create_app(settings, engine, on_change=daemon.poke)
        config = uvicorn.Config(
            app,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=GRACEFUL_HTTP_SHUTDOWN_SECONDS,
            access_log=settings.log_level.lower() == "debug",
        )
        server = uvicorn.Server(config)
        _write_daemon_info(info_path, {"pid": os.getpid(), "host": settings.host, "port": port, "url": url})
        daemon.start_scheduler()
        log.info("mftd listening on %s (token in %s, data in %s)", url, settings.token_path, settings.data_dir)
        if not stop_requested.is_set():
            server.run(sockets=[listener])
    finally:
        log.info("mftd stopping")
        daemon.shutdown()
        _remove_daemon_info(info_path)
        listener.close()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.close()
        log.info("mftd stopped")


def check_host_allowed(settings: Settings) -> None:
    """Raises RemoteHostRefusedError for a non-loopback host without ``allow_remote``."""
    if not is_loopback_host(settings.host) and not settings.allow_remote:
        raise RemoteHostRefusedError(
            f"refusing to listen on {settings.host}: it is not a loopback address, so anyone on that network "
            "who gets the token could train on this device. Use --host 127.0.0.1, or pass --allow-remote "
            "(MFTD_ALLOW_REMOTE=1) if you mean it."
        )


def client_url(host: str, port: int) -> str:
    """The URL a local client uses to reach a daemon listening on ``host:port``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def read_daemon_info(data_dir: Path) -> Optional[dict]:
    """The running daemon's ``daemon.json`` (pid, host, port, url), or None if there is none or its pid is gone."""
    try:
        info = json.loads((data_dir / DAEMON_INFO_FILENAME).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        command_line = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return info
    return info if "mftd" in command_line else None  # a reused pid is not our daemon


def _lock_data_dir(data_dir: Path):
    """Hold an exclusive lock on the data dir for this process's life; the kernel releases it however we exit."""
    lock = open(data_dir / LOCK_FILENAME, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        info = read_daemon_info(data_dir) or {}
        where = f" (pid {info['pid']}, at {info.get('url')})" if info else ""
        raise ConflictError(
            f"another mftd{where} is already running on {data_dir}; stop it first, or use another --data-dir"
        ) from None
    return lock


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}; is another mftd running? Try --port") from error
    return sock


def _write_daemon_info(path: Path, info: dict) -> None:
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(info) + "\n")
    os.replace(temp, path)


def _remove_daemon_info(path: Path) -> None:
    info = read_daemon_info(path.parent)
    if info is None or int(info["pid"]) == os.getpid():
        path.unlink(missing_ok=True)
