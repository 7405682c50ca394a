"""The ``mftd`` command line, run as ``python -m mftd ...`` against a real daemon process on a free port.

The daemon and the CLI run from the fake jobs root, so the worker they start is the fake
``jobs.worker`` (its mode is the job's name) and ``models import`` runs the fake ``jobs.gguf_import``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.mftd.conftest import REPO_ROOT, wait_until, write_model_folder

CLI_TIMEOUT = 60


class Daemon:
    def __init__(self, data_dir: Path, cwd: Path, log_path: Path, extra_env: dict | None = None):
        self.data_dir = data_dir
        self.cwd = cwd
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MFTD_TICK_SECONDS="0.1", MFTD_STOP_GRACE_SECONDS="5")
        env.pop("MFTD_URL", None)
        env.pop("MFTD_TOKEN", None)
        env.update(extra_env or {})
        self.env = env
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mftd", "serve", "--data-dir", str(data_dir), "--port", "0"],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        info_path = data_dir / "daemon.json"
        wait_until(lambda: info_path.exists() or self.process.poll() is not None, timeout=30, what="daemon.json")
        assert self.process.poll() is None, log_path.read_text()
        self.info = json.loads(info_path.read_text())
        wait_until(lambda: self.cli("ping", check=False).returncode == 0, timeout=30, what="the daemon to answer")

    def cli(self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT, **env) -> subprocess.CompletedProcess:
        """``python -m mftd ARGS`` with MFTD_DATA_DIR pointing at this daemon's data dir."""
        result = subprocess.run(
            [sys.executable, "-m", "mftd", *args],
            cwd=self.cwd, env=dict(self.env, MFTD_DATA_DIR=str(self.data_dir), **env),
            capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"mftd {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, fake_jobs_root):
    root = tmp_path_factory.mktemp("cli")
    daemon = Daemon(root / "data", fake_jobs_root, root / "daemon.log")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def model_and_dataset(daemon, tmp_path_factory):
    """A registered model ``tiny`` and dataset ``words`` for jobs."""
    folder = write_model_folder(tmp_path_factory.mktemp("model") / "tiny")
    daemon.cli("models", "add", "tiny", str(folder))
    dataset = tmp_path_factory.mktemp("dataset") / "words.jsonl"
    dataset.write_text("".join(json.dumps({"text": f"hello {n}"}) + "\n" for n in range(4)))
    daemon.cli("datasets", "add", "words", str(dataset))
    return "tiny", "words"


def submit(daemon: Daemon, mode: str, *extra: str) -> int:
    result = daemon.cli("submit", "--model", "tiny", "--dataset", "words", "--name", mode, "--max-steps", "50", *extra)
    return int(result.stdout.strip())


def job_json(daemon: Daemon, job_id: int) -> dict:
    return json.loads(daemon.cli("show", str(job_id), "--json").stdout)


def wait_for_status(daemon: Daemon, job_id: int, *statuses: str, timeout: float = 30) -> dict:
    return wait_until(
        lambda: (job := job_json(daemon, job_id))["status"] in statuses and job, timeout=timeout, interval=0.1,
        what=f"job {job_id} to become {statuses}",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the daemon ---------------------------------------------------------------------------------------


def test_serve_writes_daemon_json_and_answers_ping(daemon):
    info = daemon.info
    assert info["pid"] == daemon.process.pid
    assert info["host"] == "127.0.0.1" and info["port"] > 0
    assert info["url"] == f"http://127.0.0.1:{info['port']}"
    assert "mftd is running at" in daemon.cli("ping").stdout
    assert f"mftd listening on {info['url']}" in daemon.log_path.read_text()
    assert (daemon.data_dir / "token").stat().st_mode & 0o077 == 0


def test_the_daemon_process_never_loads_torch_and_stays_small(daemon, model_and_dataset):
    job_id = submit(daemon, "train:2")
    assert daemon.cli("wait", str(job_id)).returncode == 0
    daemon.cli("jobs")
    daemon.cli("device")
    maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps
    rss_mb = psutil.Process(daemon.process.pid).memory_info().rss / 2**20
    assert rss_mb < 150, f"the idle daemon uses {rss_mb:.0f} MB"


def test_not_running_says_how_to_start_it(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "mftd", "jobs", "--data-dir", str(tmp_path), "--url", f"http://127.0.0.1:{port}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"mftd: mftd is not running at http://127.0.0.1:{port}; start it with `mftd serve`"


def test_serve_refuses_a_remote_host_without_allow_remote(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mftd", "serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT,
    )
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr and "--allow-remote" in result.stderr


def test_a_second_daemon_on_the_same_data_dir_is_refused(daemon):
    result = daemon.cli("serve", "--data-dir", str(daemon.data_dir), "--port", "0", check=False)
    assert result.returncode == 1
    assert f"another mftd (pid {daemon.process.pid}, at {daemon.info['url']}) is already running" in result.stderr


def test_a_wrong_token_is_reported(daemon):
    result = daemon.cli("jobs", "--token", "wrong", check=False)
    assert result.returncode == 1
    assert "refused the token" in result.stderr


def test_sigterm_stops_the_daemon_cleanly_and_the_job_resumes_after_a_restart(tmp_path, fake_jobs_root):
    data_dir = tmp_path / "data"
    daemon = Daemon(data_dir, fake_jobs_root, tmp_path / "daemon.log")
    try:
        write_model_folder(tmp_path / "m")
        daemon.cli("models", "add", "tiny", str(tmp_path / "m"))
        (tmp_path / "d.jsonl").write_text('{"text": "hi"}\n')
        daemon.cli("datasets", "add", "words", str(tmp_path / "d.jsonl"))
        job_id = submit(daemon, "train:100000:0.05")
        wait_until(lambda: job_json(daemon, job_id)["step"] >= 2, what="some progress")
    finally:
        assert daemon.stop() == 0
    assert not (data_dir / "daemon.json").exists()
    assert "mftd stopped" in (tmp_path / "daemon.log").read_text()
    with sqlite3.connect(data_dir / "mftd.db") as db:
        status, step_at_stop = db.execute("SELECT status, step FROM job WHERE id = ?", (job_id,)).fetchone()
    assert status.lower() == "interrupted"  # SQLAlchemy stores the enum member name

    daemon = Daemon(data_dir, fake_jobs_root, tmp_path / "daemon.log")
    try:
        events = daemon.cli("logs", str(job_id)).stdout
        assert "running -> interrupted: the daemon stopped while this job was running" in events
        job = wait_until(lambda: (job := job_json(daemon, job_id))["step"] > step_at_stop and job, what="the job to go on")
        assert job["status"] == "running" and job["interruptions"] == 0
        daemon.cli("cancel", str(job_id))
        assert daemon.cli("wait", str(job_id), check=False).returncode == 1
    finally:
        daemon.stop()


def test_after_a_sigkilled_daemon_the_next_one_stops_the_surviving_worker_and_resumes_the_job(tmp_path, fake_jobs_root):
    data_dir = tmp_path / "data"
    daemon = Daemon(data_dir, fake_jobs_root, tmp_path / "daemon.log")
    try:
        write_model_folder(tmp_path / "m")
        daemon.cli("models", "add", "tiny", str(tmp_path / "m"))
        (tmp_path / "d.jsonl").write_text('{"text": "hi"}\n')
        daemon.cli("datasets", "add", "words", str(tmp_path / "d.jsonl"))
        job_id = submit(daemon, "sleep")
        ready = data_dir / "jobs" / str(job_id) / "ready"
        wait_until(ready.exists, what="the worker")
    finally:
        daemon.process.kill()
        daemon.process.wait()
    worker_pid = int(wait_until(lambda: ready.read_text().strip(), what="the worker's pid"))
    assert psutil.pid_exists(worker_pid), "the worker lives in its own session and outlives the daemon"
    ready.unlink()

    daemon = Daemon(data_dir, fake_jobs_root, tmp_path / "daemon.log")  # the data dir lock died with the old daemon
    try:
        assert f"its worker (pid {worker_pid}) outlived the daemon" in (tmp_path / "daemon.log").read_text()
        assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
        wait_until(ready.exists, what="the job to run again under the new daemon")
        events = daemon.cli("logs", str(job_id)).stdout
        assert "running -> interrupted: the daemon stopped while this job was running" in events
        assert job_json(daemon, job_id)["interruptions"] == 0
        daemon.cli("cancel", str(job_id))
        assert daemon.cli("wait", str(job_id), check=False).returncode == 1
    finally:
        daemon.stop()


# ---- models and datasets ------------------------------------------------------------------------------


def test_models_add_and_list(daemon, model_and_dataset, tmp_path):
    table = daemon.cli("models", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "TYPE"]
    assert "tiny" in table and "qwen2" in table
    models = json.loads(daemon.cli("models", "list", "--json").stdout)
    assert [model["name"] for model in models] == ["tiny"]

    result = daemon.cli("models", "add", "nothing", str(tmp_path / "missing"), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("mftd: model folder ") and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_models_import_runs_the_converter_as_a_child_and_registers_its_folder(daemon):
    gguf = daemon.data_dir.parent / "tiny.gguf"
    gguf.write_text("pretend GGUF")
    result = daemon.cli("models", "import", str(gguf), "--name", "imported")
    assert "[  0%] reading tiny.gguf" in result.stderr
    assert "[ 20%] weights (still working, 10 s)" in result.stderr
    assert "[100%] done in 0.5 s" in result.stderr
    models = {model["name"]: model for model in json.loads(daemon.cli("models", "list", "--json").stdout)}
    assert models["imported"]["path"] == str(daemon.data_dir / "models" / "imported")

    again = daemon.cli("models", "import", str(gguf), "--name", "imported", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_a_failed_import_leaves_nothing_behind(daemon):
    bad = daemon.data_dir.parent / "bad.gguf"
    bad.write_text("bad")
    result = daemon.cli("models", "import", str(bad), "--name", "broken", check=False)
    assert result.returncode == 1
    assert "the GGUF import failed: not a GGUF file (exit code 78)" in result.stderr
    assert not (daemon.data_dir / "models" / "broken").exists()


def test_datasets_add_and_list(daemon, model_and_dataset, tmp_path):
    datasets = json.loads(daemon.cli("datasets", "list", "--json").stdout)
    words = next(dataset for dataset in datasets if dataset["name"] == "words")
    assert (words["format"], words["num_examples"]) == ("text", 4)
    assert "words" in daemon.cli("datasets", "list").stdout

    linked = tmp_path / "pc.jsonl"
    linked.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    assert "prompt_completion" in daemon.cli("datasets", "add", "pc", str(linked), "--link").stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    result = daemon.cli("datasets", "add", "bad", str(bad), check=False)
    assert result.returncode == 1
    assert "line 2" in result.stderr


# ---- jobs ---------------------------------------------------------------------------------------------


def test_submit_prints_the_id_and_wait_returns_0_on_success(daemon, model_and_dataset):
    result = daemon.cli("submit", "--model", "tiny", "--dataset", "words", "--name", "train:3", "--method", "lora",
                        "--learning-rate", "0.001", "--set", "batch_size=2", "--set", "lora_target_modules=[\"q_proj\"]")
    job_id = int(result.stdout.strip())
    assert f"job {job_id} queued" in result.stderr
    job = job_json(daemon, job_id)
    assert job["config"]["batch_size"] == 2 and job["config"]["learning_rate"] == 0.001
    assert job["config"]["lora_target_modules"] == ["q_proj"]

    waited = daemon.cli("wait", str(job_id))
    assert waited.stdout.strip().startswith(f"job {job_id}: succeeded (step 3/3")
    rows = [line.split()[:2] for line in daemon.cli("jobs", "--status", "succeeded").stdout.splitlines()]
    assert [str(job_id), "succeeded"] in rows
    listed = json.loads(daemon.cli("jobs", "--json").stdout)
    assert job_id in [job["id"] for job in listed]
    assert "quiet" not in daemon.cli("submit", "--model", "tiny", "--dataset", "words", "--name", "train:1", "--quiet").stderr


def test_wait_returns_1_when_the_job_fails(daemon, model_and_dataset):
    job_id = submit(daemon, "exit:1")
    result = daemon.cli("wait", str(job_id), check=False)
    assert result.returncode == 1
    assert result.stdout.strip() == f"job {job_id}: failed (step 0) — fake failure with code 1"


def test_bad_job_fields_are_reported_in_one_line(daemon, model_and_dataset):
    unknown = daemon.cli("submit", "--model", "tiny", "--dataset", "words", "--set", "batch=2", check=False)
    assert unknown.returncode == 1 and "unknown job config field(s): batch" in unknown.stderr
    invalid = daemon.cli("submit", "--model", "tiny", "--dataset", "words", "--learning-rate", "5", check=False)
    assert invalid.returncode == 1
    assert invalid.stderr.startswith("mftd: learning_rate: ") and len(invalid.stderr.strip().splitlines()) == 1
    missing = daemon.cli("submit", "--model", "nope", "--dataset", "words", check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_pause_resume_cancel_and_logs(daemon, model_and_dataset):
    job_id = submit(daemon, "sleep")
    wait_for_status(daemon, job_id, "running")
    paused = daemon.cli("pause", str(job_id))
    assert paused.stdout.startswith(f"job {job_id}: ")
    wait_for_status(daemon, job_id, "paused")
    assert daemon.cli("pause", str(job_id), check=False).returncode == 1  # paused -> paused is not a move
    waited = daemon.cli("wait", str(job_id), check=False)
    assert waited.returncode == 1 and f"`mftd resume {job_id}`" in waited.stderr

    daemon.cli("resume", str(job_id))
    wait_for_status(daemon, job_id, "running")
    daemon.cli("cancel", str(job_id))
    job = wait_for_status(daemon, job_id, "cancelled")
    assert job["status_reason"] == "cancelled by the user"

    logs = daemon.cli("logs", str(job_id)).stdout.splitlines()
    statuses = [line.split("status", 1)[1].strip() for line in logs if " status " in line]
    assert [text.split(":")[0] for text in statuses] == [
        "queued -> running", "running -> paused", "paused -> queued", "queued -> running", "running -> cancelled",
    ]
    assert statuses[1] == "running -> paused: paused by the user; resume it to continue from its last checkpoint"
    events = [json.loads(line) for line in daemon.cli("logs", str(job_id), "--json").stdout.splitlines()]
    assert all(event["job_id"] == job_id for event in events)


def test_logs_follow_streams_until_the_job_ends(daemon, model_and_dataset):
    job_id = submit(daemon, "sleep")
    wait_for_status(daemon, job_id, "running")
    follower = subprocess.Popen(
        [sys.executable, "-m", "mftd", "logs", str(job_id), "-f"],
        cwd=daemon.cwd, env=dict(daemon.env, MFTD_DATA_DIR=str(daemon.data_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen = []
        while not any("queued -> running" in line for line in seen):
            line = follower.stdout.readline()
            assert line, f"the stream ended early: {seen}"
            seen.append(line)
        time.sleep(0.3)
        assert follower.poll() is None, "logs -f must keep following a running job"
        daemon.cli("cancel", str(job_id))
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "running -> cancelled: cancelled by the user" in out
    assert out.strip().endswith(f"job {job_id} is cancelled; the stream ends")


def test_device(daemon):
    text = daemon.cli("device").stdout
    assert text.splitlines()[0] in ("can train: yes", "can train: no")
    assert "free_storage_mb" in text
    device = json.loads(daemon.cli("device", "--json").stdout)
    assert {"can_train", "reasons", "readings", "constraints", "jobs"} <= set(device)
    assert "default constraints:" in text and "max_battery_temp_c" in text
    for reading in device["readings"]:
        assert reading["source"] and (reading["value"] is not None or reading["unavailable_reason"])


@pytest.mark.skipif(psutil.sensors_battery() is not None, reason="this machine has a battery")
def test_device_on_a_machine_without_a_battery(daemon):
    lines = daemon.cli("device").stdout.splitlines()
    [charging] = [line for line in lines if line.startswith("charging ")]
    assert "yes" in charging and "mains power" in charging
    [level] = [line for line in lines if line.startswith("battery_percent ")]
    assert "unavailable" in level and "no battery under /sys/class/power_supply" in level
    assert "termux-battery-status not found" in level


def test_an_unknown_job_is_a_clear_error(daemon):
    result = daemon.cli("show", "999999", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("mftd: ") and "999999" in result.stderr
