"""``mftd watch`` and ``mftd open`` against a real daemon process running the fake worker (see tests/mftd/conftest.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import deque

import httpx
import pytest

from mftd.watch import Display, Pace, WatchState, progress_line
from tests.mftd.conftest import write_model_folder
from tests.mftd.test_cli import Daemon, wait_for_status


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, fake_jobs_root):
    root = tmp_path_factory.mktemp("watch")
    daemon = Daemon(root / "data", fake_jobs_root, root / "daemon.log")
    folder = write_model_folder(root / "tiny")
    daemon.cli("models", "add", "tiny", str(folder))
    dataset = root / "words.jsonl"
    dataset.write_text("".join(json.dumps({"text": f"hello {n}"}) + "\n" for n in range(4)))
    daemon.cli("datasets", "add", "words", str(dataset))
    yield daemon
    daemon.stop()


def submit(daemon: Daemon, mode: str) -> int:
    return int(daemon.cli("submit", "--model", "tiny", "--dataset", "words", "--name", mode, "-q").stdout)


def start_watch(daemon: Daemon, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mftd", "watch", *args],
        cwd=daemon.cwd, env=dict(daemon.env, MFTD_DATA_DIR=str(daemon.data_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_until(process: subprocess.Popen, needle: str, limit: int = 200) -> list[str]:
    lines: list[str] = []
    while not any(needle in line for line in lines):
        line = process.stdout.readline()
        assert line and len(lines) < limit, f"no {needle!r} in {lines}; stderr: {process.stderr.read() if not line else ''}"
        lines.append(line)
    return lines


def test_watch_json_follows_a_job_to_success(daemon):
    job_id = submit(daemon, "train:15:0.1")
    result = daemon.cli("watch", str(job_id), "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    progress = [line for line in lines if line["type"] == "progress"]
    assert progress[-1]["status"] == "succeeded" and progress[-1]["step"] == 15 and progress[-1]["total_steps"] == 15
    running = [line for line in progress if line["status"] == "running" and line["step"] < 15]
    assert running and any(line["eta_seconds"] is not None for line in running), progress
    assert [line["step"] for line in progress] == sorted(line["step"] for line in progress)
    events = [line["message"] for line in lines if line["type"] == "event"]
    assert "queued -> running" in events and "running -> succeeded" in events


def test_watch_draws_lines_and_says_why_a_job_waits(daemon):
    blocker = submit(daemon, "sleep")
    wait_for_status(daemon, blocker, "running")
    job_id = submit(daemon, "train:3")
    watcher = start_watch(daemon, str(job_id))
    try:
        lines = read_until(watcher, f"job {blocker} is training")
        assert lines[-1].startswith(f"job {job_id} queued  step 0")
        daemon.cli("pause", str(job_id))
        read_until(watcher, f"paused; `mftd resume {job_id}` to continue it")
        daemon.cli("cancel", str(job_id))
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
        daemon.cli("cancel", str(blocker))
    assert watcher.returncode == 1, err
    assert "paused -> cancelled" in out
    assert out.splitlines()[-1].startswith(f"job {job_id} cancelled")


def test_watch_an_unknown_job_is_a_clear_error(daemon):
    result = daemon.cli("watch", "424242", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("mftd: job 424242 does not exist")


def test_open_prints_a_one_time_login_url(daemon):
    url = daemon.cli("open", "--no-browser").stdout.strip()
    base, _, code = url.partition("/#code=")
    assert base == daemon.info["url"] and code
    exchange = lambda: httpx.post(f"{base}/v1/auth/exchange", headers={"Authorization": f"Bearer {code}"})  # noqa: E731
    assert exchange().json()["token"] == (daemon.data_dir / "token").read_text().strip()
    assert exchange().status_code == 401
    as_json = json.loads(daemon.cli("open", "--no-browser", "--json").stdout)
    assert as_json["url"].startswith(f"{base}/#code=") and as_json["expires_in"] > 0


def test_progress_line():
    progress = {"id": 3, "status": "running", "step": 5, "total_steps": 20, "loss": 1.23456, "tokens_per_second": 812.4, "eta_seconds": 75, "reasons": []}
    line = progress_line(progress, width=80)
    assert line == "job 3 running  [#####---------------]  5/20  25%  loss 1.235  812 tok/s  ETA 1 min 15 s"
    waiting = {"id": 3, "status": "waiting", "step": 5, "total_steps": None, "reasons": ["battery 12 % is below 30 %", "not charging"]}
    assert progress_line(waiting) == "job 3 waiting  step 5 — battery 12 % is below 30 %; not charging"


def test_pace_uses_recent_steps_and_restarts_after_a_resume():
    pace = Pace(deque(maxlen=20))
    pace.add(100.0, 0)
    pace.add(110.0, 5)
    assert pace.eta_seconds(5, 20) == pytest.approx(30.0)
    pace.add(111.0, 2)  # resumed from an earlier checkpoint
    assert pace.eta_seconds(2, 20) is None


def test_watch_state_prefers_metric_times_and_shows_tokens_per_second():
    state = WatchState()
    state.add_job({"id": 1, "status": "running", "step": 1, "total_steps": 4}, now=1000.0)
    state.add_metrics([
        {"split": "train", "step": 1, "tokens_per_second": 50.0, "created_at": "2026-01-01T00:00:00.000Z"},
        {"split": "train", "step": 2, "tokens_per_second": 60.0, "created_at": "2026-01-01T00:00:02.000Z"},
        {"split": "eval", "step": 2, "loss": 1.0, "created_at": "2026-01-01T00:00:03.000Z"},
    ])
    state.job["step"] = 2
    progress = state.progress()
    assert progress["tokens_per_second"] == 60.0 and progress["eta_seconds"] == 4.0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place_below_the_events():
    terminal = _Terminal()
    display = Display(terminal, as_json=False, width=80)
    display.progress({"id": 1, "status": "running", "step": 1, "total_steps": 4})
    display.progress({"id": 1, "status": "running", "step": 1, "total_steps": 4})  # unchanged: not drawn again
    display.event({"kind": "checkpoint", "created_at": "2026-01-01T10:11:12.000Z", "message": "checkpoint saved at step 1"})
    display.progress({"id": 1, "status": "running", "step": 2, "total_steps": 4})
    display.close()
    assert terminal.getvalue().split("\r\x1b[2K") == [
        "",
        "job 1 running  [#####---------------]  1/4  25%",
        "10:11:12  checkpoint saved at step 1\n",
        "job 1 running  [##########----------]  2/4  50%\n",
    ]
