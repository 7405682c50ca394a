"""Fixtures for the daemon core: a real SQLite file per test, and a fake ``jobs`` package.

The fake ``jobs.worker`` is a real child process that speaks the worker protocol (heartbeats and
steps in SQLite, an ``error`` event before exit 1/78, exit 75 on SIGTERM) without torch, so the
supervisor, recovery and CLI tests run in seconds. Its behaviour comes from ``--mode`` or, when
the daemon starts it, from the job's name:

    train[:STEPS[:SECONDS_PER_STEP]]  advance job.step to STEPS, then exit 0 (75 on SIGTERM)
    sleep                             heartbeat until SIGTERM, then exit 75 (writing jobs/<id>/stopped)
    hang                              no heartbeats; exit 75 on SIGTERM
    ignore-term                       ignore SIGTERM and sleep
    exit:CODE                         exit with CODE (an error event first for 1 and 78)
    kill-self[:STEPS[:SECONDS]]       advance STEPS steps, wait SECONDS, then SIGKILL itself (an OOM kill)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from sqlalchemy.engine import Engine

from mftd.db import make_engine, new_session
from mftd.jobconfig import JobConfig
from mftd.settings import Settings
from mftd.status import JobStatus
from mftd.tables import Dataset, Job, Model

REPO_ROOT = Path(__file__).resolve().parents[2]

MODEL_FOLDER_SOURCE = '''
def write_model_folder(folder):
    """A tiny Hugging Face folder that passes mftd's checks without torch: config, a safetensors header, a tokenizer file."""
    import json, struct
    from pathlib import Path
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "max_position_embeddings": 128, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    (folder / "tokenizer.json").write_text("{}")
    return folder
'''

FAKE_WORKER_SOURCE = r'''
"""A fake training worker: the worker protocol without torch (see tests/mftd/conftest.py)."""
import argparse, os, signal, sqlite3, sys, time
from datetime import datetime, timezone
from pathlib import Path


def now():
    return datetime.now(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


parser = argparse.ArgumentParser()
parser.add_argument("job_id", type=int)
parser.add_argument("--data-dir", required=True)
parser.add_argument("--mode")
args = parser.parse_args()
data_dir = Path(args.data_dir)
db = sqlite3.connect(data_dir / "mftd.db", timeout=30)
name, step = db.execute("SELECT name, step FROM job WHERE id = ?", (args.job_id,)).fetchone()
mode = args.mode or name or "train"
print(f"fake worker: job {args.job_id}, mode {mode}, MFTD_DATA_DIR={os.environ.get('MFTD_DATA_DIR')}", flush=True)

stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-term" else on_term)
job_dir = data_dir / "jobs" / str(args.job_id)
job_dir.mkdir(parents=True, exist_ok=True)
(job_dir / "ready").write_text(str(os.getpid()))


def update(**fields):
    assignments = ", ".join(f"{key} = ?" for key in fields)
    db.execute(f"UPDATE job SET {assignments} WHERE id = ?", (*fields.values(), args.job_id))
    db.commit()


def exit_stopped():
    (job_dir / "stopped").write_text("75")
    sys.exit(75)


def error_event(message):
    db.execute(
        "INSERT INTO event (job_id, created_at, level, kind, message) VALUES (?, ?, 'error', 'error', ?)",
        (args.job_id, now(), message),
    )
    db.commit()


kind, _, rest = mode.partition(":")
if kind == "exit":
    code = int(rest)
    if code in (1, 78):
        error_event(f"fake failure with code {code}")
    sys.exit(code)
elif kind == "kill-self":
    parts = rest.split(":") if rest else []
    update(step=step + int(parts[0] if parts else 0), heartbeat_at=now())
    time.sleep(float(parts[1]) if len(parts) > 1 else 0)
    os.kill(os.getpid(), signal.SIGKILL)
elif kind == "train":
    parts = rest.split(":") if rest else []
    total = int(parts[0]) if parts else 3
    seconds = float(parts[1]) if len(parts) > 1 else 0.02
    update(total_steps=total, heartbeat_at=now())
    while step < total:
        if stopping:
            print(f"stopping at step {step}", flush=True)
            exit_stopped()
        time.sleep(seconds)
        step += 1
        update(step=step, loss=1.0 / step, heartbeat_at=now())
    sys.exit(0)
else:
    while True:
        if stopping:
            exit_stopped()
        if kind == "sleep":
            update(heartbeat_at=now())
        time.sleep(0.05)
'''

FAKE_GGUF_IMPORT_SOURCE = (
    r'''
"""A fake GGUF importer: JSON progress lines on stdout as jobs.gguf_import prints them, then a model folder (exit 78 for a file holding 'bad')."""
import json, sys, time
from pathlib import Path
'''
    + MODEL_FOLDER_SOURCE
    + r'''
source, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
print(json.dumps({"stage": "reading", "progress": 0.0, "message": f"reading {source.name}"}), flush=True)
if source.read_text().strip() == "bad":
    print(json.dumps({"stage": "error", "progress": 1.0, "message": "not a GGUF file"}), flush=True)
    sys.exit(78)
print(json.dumps({"stage": "weights", "progress": 0.2, "elapsed_seconds": 10}), flush=True)
write_model_folder(out_dir)
print(json.dumps({"stage": "done", "progress": 1.0, "seconds": 0.5, "path": str(out_dir)}), flush=True)
'''
)

_namespace: dict = {}
exec(MODEL_FOLDER_SOURCE, _namespace)
write_model_folder: Callable[[Path], Path] = _namespace["write_model_folder"]


@pytest.fixture(scope="session")
def fake_jobs_root(tmp_path_factory) -> Path:
    """A folder holding a fake ``jobs`` package (worker and gguf_import); run ``python -m jobs.…`` from it."""
    root = tmp_path_factory.mktemp("fake-jobs")
    package = root / "jobs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "worker.py").write_text(FAKE_WORKER_SOURCE)
    (package / "gguf_import.py").write_text(FAKE_GGUF_IMPORT_SOURCE)
    return root


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        data_dir=tmp_path / "data",
        tick_seconds=0.1,
        heartbeat_timeout_seconds=30,
        stop_grace_seconds=5,
        max_interruptions=3,
    )
    settings.ensure_dirs()
    return settings


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = make_engine(settings.db_path)
    yield engine
    engine.dispose()


@pytest.fixture
def make_job(engine: Engine) -> Callable[..., int]:
    """Insert a job (with a model and a dataset row) and return its id; keyword arguments set Job fields."""
    counter = iter(range(1, 10_000))

    def _make_job(**fields) -> int:
        number = next(counter)
        with new_session(engine) as session:
            model = Model(
                name=f"model-{number}", path="/nowhere", architecture="Qwen2ForCausalLM", model_type="qwen2",
                num_parameters=16, dtype="float32", context_length=128, has_chat_template=False,
            )
            dataset = Dataset(name=f"dataset-{number}", path="/nowhere.jsonl", format="text", num_examples=1, size_bytes=1)
            session.add(model)
            session.add(dataset)
            session.commit()
            fields.setdefault("status", JobStatus.QUEUED)
            job = Job(model_id=model.id, dataset_id=dataset.id, config_json=JobConfig().model_dump_json(), **fields)
            session.add(job)
            session.commit()
            return job.id

    return _make_job


def get_job(engine: Engine, job_id: int) -> Job:
    with new_session(engine) as session:
        return session.get(Job, job_id)


def fake_worker_command(fake_jobs_root: Path, mode: Optional[str] = None) -> Callable[[int, Path], list[str]]:
    """A ``command_factory`` for the Supervisor that runs the fake worker script in ``mode``."""

    def command(job_id: int, data_dir: Path) -> list[str]:
        argv = [sys.executable, str(fake_jobs_root / "jobs" / "worker.py"), str(job_id), "--data-dir", str(data_dir)]
        return argv + (["--mode", mode] if mode else [])

    return command


def plan_json(micro_batch: int = 8, effective_batch: int = 8, gradient_checkpointing: bool = False, **extra) -> str:
    """A plan as the worker writes it before training."""
    plan = {
        "micro_batch": micro_batch,
        "grad_accum_steps": effective_batch // micro_batch,
        "effective_batch": effective_batch,
        "gradient_checkpointing": gradient_checkpointing,
        "parameter_sharding": False,
        "budget_mb": 9642.0,
        "estimate_mb": 1234.4,
        "estimate": {"weights": 17.0, "gradients": 0.5, "optimizer": 1.0, "activations": 770.0, "logits": 25.9, "runtime": 420.0},
        "fits": True,
        **extra,
    }
    return json.dumps(plan)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_until_ready(settings: Settings, job_id: int) -> int:
    """Wait for the fake worker to install its signal handler; returns its pid."""
    ready = settings.job_dir(job_id) / "ready"
    wait_until(ready.exists, what=f"the fake worker of job {job_id} to be ready")
    return int(wait_until(lambda: ready.read_text().strip(), what="the ready file's pid"))


def read_json_file(path: Path) -> dict:
    return json.loads(path.read_text())


def run_fake_module(fake_jobs_root: Path, module: str, *args: str) -> subprocess.Popen:
    """``python -m <module> ARGS`` from the fake jobs root (so its ``jobs`` package wins)."""
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=fake_jobs_root, env=env)
