"""termux-service/ under Debian's runit: install.sh into a temporary $PREFIX, runsv runs mftd, a SIGKILLed daemon comes back and its job finishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.daemon_process import REPO_ROOT, free_port, wait_for_status, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("runsv") is None, reason="runit is not installed (.ci/run installs it: apt-get install runit)"),
]



def daemon_pid(data_dir: Path):
    try:
        return json.loads((data_dir / "daemon.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_install_then_runsv_restarts_a_killed_daemon_and_the_job_finishes(tmp_path, tiny_qwen2, chat_jsonl):
    prefix, home, data_dir = tmp_path / "prefix", tmp_path / "home", tmp_path / "data"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],  # Debian: no sv-enable, no termux-wake-lock
        "PREFIX": str(prefix),
        "HOME": str(home),
        "MFTD_EXEC": f"{sys.executable} -m mftd",
    }
    installed = subprocess.run(["sh", str(REPO_ROOT / "termux-service" / "install.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr + installed.stdout
    assert "skipped sv-enable" in installed.stdout and "skipped: termux-wake-lock sv-enable" in installed.stdout
    service = prefix / "var" / "service" / "mftd"
    assert os.access(service / "run", os.X_OK) and os.access(service / "log" / "run", os.X_OK)
    assert (home / ".termux" / "boot" / "mftd").exists()
    config = prefix / "etc" / "mftd" / "mftd.conf"
    assert f'MFTD_EXEC="{sys.executable} -m mftd"' in config.read_text()
    port = free_port()
    with config.open("a") as f:
        f.write(f'MFTD_DATA_DIR="{data_dir}"\nMFTD_PORT={port}\nMFTD_TICK_SECONDS=0.5\nPYTHONPATH="{REPO_ROOT}"\n')

    runsv = subprocess.Popen(["runsv", str(service)], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(url), 60, "the service's daemon")
        token = (data_dir / "token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            assert client.post("/v1/models", json={"name": "tiny", "path": str(tiny_qwen2)}).status_code == 201
            with chat_jsonl.open("rb") as f:
                assert client.post("/v1/datasets", data={"name": "chat"}, files={"file": ("chat.jsonl", f)}).status_code == 201
            job = client.post("/v1/jobs", json={"model": "tiny", "dataset": "chat", "max_steps": 60, "batch_size": 2,
                                                "grad_accum_steps": 2, "checkpoint_every_steps": 10, "learning_rate": 1e-3})
            assert job.status_code == 201, job.text
            job_id = job.json()["id"]
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["step"] >= 12, 120, "step 12")

            first = daemon_pid(data_dir)
            os.kill(first, signal.SIGKILL)
            second = wait_until(lambda: (pid := daemon_pid(data_dir)) not in (None, first) and answers(url) and pid, 60, "runsv to restart mftd")
            assert second != first
            job = wait_for_status(client, job_id, {"succeeded"}, timeout=300)
            assert job["step"] == 60
            messages = [event["message"] for event in _events(client, job_id)]
        assert any("resumed from step" in message for message in messages), messages
        log = (prefix / "var" / "log" / "sv" / "mftd" / "current").read_text()
        assert log.count("mftd listening on") >= 2, log[-2000:]
    finally:
        subprocess.run(["sv", "-w", "30", "force-stop", str(service)], env=env, capture_output=True, timeout=60)
        subprocess.run(["sv", "exit", str(service)], env=env, capture_output=True, timeout=30)
        try:
            runsv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(runsv.pid, signal.SIGKILL)
            runsv.wait()


def _events(client, job_id: int) -> list[dict]:
    body = client.get(f"/v1/jobs/{job_id}/events").json()
    return body["data"] if isinstance(body, dict) else body
