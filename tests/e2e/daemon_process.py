"""A real mftd daemon process on a free port with its own data dir, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonProcess:
    """Starts ``python -m mftd serve`` and talks to it over real HTTP."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        command_prefix: list[str] | None = None,
    ):
        """``command_prefix`` runs before the daemon's own command and must ``exec`` it (e.g. to enter a cgroup first)."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra_env = extra_env or {}
        self.command_prefix = command_prefix or []
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "DaemonProcess":
        env = dict(os.environ)
        env.update({"MFTD_TICK_SECONDS": "0.5", "PYTHONPATH": str(REPO_ROOT)})
        env.update(self.extra_env)
        log = open(self.data_dir.parent / f"daemon-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "mftd", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"daemon did not answer /v1/health within {timeout} s")

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=150)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_status(client: httpx.Client, job_id: int, statuses: set[str], timeout: float = 300.0) -> dict:
    """Poll the job until its status is one of ``statuses``; fail with its events if it ends elsewhere."""
    final = {"succeeded", "failed", "cancelled"}
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if job["status"] in final:
            break
        time.sleep(0.3)
    events = client.get(f"/v1/jobs/{job_id}/events").json()
    raise AssertionError(f"job {job_id} is {job.get('status')}, wanted {statuses}; events: {events}")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Call ``predicate`` until it returns something truthy, and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
