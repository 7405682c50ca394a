"""One real mftd LoRA job, run by the worker in a child process against a throwaway data dir, and what it logged.

The model, dataset(s) and job rows are written as the API would write them; the worker is started
as the daemon starts it (``python -m jobs.worker`` in ``mftd.protocol.worker_environment``). Its
steps, token counts, times and validation loss are read back from the job's metrics, and its resolved
config (``jobs/<id>/config.json``) tells what mftd chose for the fields left to it, and its memory plan
the estimate it ran with and its measured peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks.common import ROOT
from mftd.protocol import RESOLVED_CONFIG_FILENAME, worker_command, worker_environment

TRAIN_DATASET_NAME = "bench-train"
VALIDATION_DATASET_NAME = "bench-validation"
# Resolved fields worth showing next to a result, when this code has them.
SHOWN_SETTINGS = ("base_dtype", "compute_dtype", "packing", "batch_size", "grad_accum_steps", "gradient_checkpointing", "num_threads", "total_steps")


@dataclass(frozen=True)
class MftdRun:
    """What one finished job logged."""

    step_tokens: list[int]
    step_seconds: list[float]
    validation_loss: Optional[float]
    resolved_config: dict[str, Any]
    padding_share: Optional[float]
    memory_plan: dict[str, Any]
    events: list[str]
    compile_seconds: Optional[float] = None  # the compile event's time, when the job compiled its layers
    compile_warnings: tuple[str, ...] = ()

    @property
    def peak_rss_mb(self) -> Optional[float]:
        """The worker's peak RSS, as it logged it next to its plan's estimate."""
        return self.memory_plan.get("peak_mb")

    def describe_settings(self) -> str:
        """The resolved settings of SHOWN_SETTINGS that this code has, as ``key=value`` pairs."""
        return ", ".join(f"{key}={self.resolved_config[key]}" for key in SHOWN_SETTINGS if key in self.resolved_config)


def run_mftd_job(model_dir: Path, train: Path, validation: Optional[Path], config_fields: dict[str, Any]) -> MftdRun:
    """Create a job with ``config_fields`` on ``train`` (and ``validation`` as its validation_dataset), run the worker to the end.

    Raises:
        SystemExit: the worker did not finish; the message has the job's error event or the worker's last output.
    """
    from mftd.db import make_engine
    from mftd.settings import Settings

    if validation is not None:
        config_fields = {**config_fields, "validation_dataset": VALIDATION_DATASET_NAME}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir))
        settings.ensure_dirs()
        engine = make_engine(settings.db_path)
        job_id = _create_job(engine, model_dir, train, validation, config_fields)
        environment = worker_environment(os.environ)  # as the daemon starts its workers: the user's own settings win
        worker = subprocess.run(worker_command(job_id, Path(data_dir), sys.executable), cwd=ROOT, env=environment, capture_output=True, text=True)
        metrics, eval_losses, errors = _job_records(engine, job_id)
        compile_seconds, compile_warnings = _compile_records(engine, job_id)
        memory_plan, events = _plan_and_events(engine, job_id)
        if worker.returncode != 0:
            reason = errors[-1] if errors else (worker.stdout + worker.stderr)[-3000:]
            sys.exit(f"the mftd worker failed on {train.name} (exit status {worker.returncode}): {reason}")
        resolved = json.loads((settings.job_dir(job_id) / RESOLVED_CONFIG_FILENAME).read_text())
    step_tokens = [metric["tokens"] for metric in metrics]
    return MftdRun(
        step_tokens=step_tokens,
        step_seconds=[metric["tokens"] / metric["tokens_per_second"] for metric in metrics],
        validation_loss=eval_losses[-1] if eval_losses else None,
        resolved_config=resolved,
        padding_share=padding_share(model_dir, train, resolved, step_tokens),
        compile_seconds=compile_seconds,
        compile_warnings=compile_warnings,
        memory_plan=memory_plan,
        events=events,
    )


def padding_share(model_dir: Path, train: Path, resolved: dict[str, Any], step_tokens: list[int]) -> float:
    """Share of padding in the micro-batches the run trained on.

    The run's micro-batches are rebuilt the way the worker built them (same tokenization, same seeded
    order, packed into rows no longer than the longest example when the job packs), to count their laid-out size.
    """
    from itertools import islice

    from jobs.batches import micro_batches
    from jobs.data import tokenize_dataset
    from jobs.model_setup import load_tokenizer

    useful = sum(step_tokens)
    tokenizer = load_tokenizer(model_dir)
    examples = tokenize_dataset(train, tokenizer, resolved["dataset_format"], resolved["max_seq_len"]).examples
    capacity = max(len(example.input_ids) for example in examples) if resolved.get("packing") else None
    batches = islice(micro_batches(examples, resolved["batch_size"], resolved["seed"], tokenizer.pad_token_id, pack_capacity=capacity),
                     len(step_tokens) * resolved["grad_accum_steps"])
    padded = sum(batch.input_ids.numel() for batch in batches)
    return 1 - useful / padded


def _create_job(engine, model_dir: Path, train: Path, validation: Optional[Path], config_fields: dict[str, Any]) -> int:
    """Model, dataset(s) and job rows as the API would write them."""
    from mftd.db import new_session
    from mftd.jobconfig import JobConfig
    from mftd.modelinfo import inspect_model_folder
    from mftd.tables import Job, Model

    config = JobConfig(**config_fields)
    with new_session(engine) as session:
        model = Model(name="bench-model", **inspect_model_folder(model_dir).to_dict())
        train_row = _dataset_row(TRAIN_DATASET_NAME, train)
        session.add_all([model, train_row] + ([_dataset_row(VALIDATION_DATASET_NAME, validation)] if validation is not None else []))
        session.commit()
        job = Job(model_id=model.id, dataset_id=train_row.id, config_json=config.model_dump_json(exclude_none=True))
        session.add(job)
        session.commit()
        return job.id


def _dataset_row(name: str, path: Path):
    """A Dataset row for ``path``, validated as registration does."""
    from mftd.datasets import validate_jsonl
    from mftd.tables import Dataset

    info = validate_jsonl(path)
    return Dataset(name=name, path=str(path), format=info.format, num_examples=info.num_examples, size_bytes=info.size_bytes,
                   longest_example_chars=info.longest_example_chars)


def _job_records(engine, job_id: int) -> tuple[list[dict], list[float], list[str]]:
    """The job's training metrics by step, its validation losses by step, and its error events' messages."""
    from sqlmodel import select

    from mftd.db import new_session
    from mftd.tables import Event, Metric

    with new_session(engine) as session:
        metrics = session.exec(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step, Metric.id)).all()
        errors = session.exec(select(Event).where(Event.job_id == job_id, Event.level == "error").order_by(Event.id)).all()
        return (
            [{"step": m.step, "tokens": m.tokens, "tokens_per_second": m.tokens_per_second} for m in metrics if m.split == "train"],
            [m.loss for m in metrics if m.split == "eval"],
            [event.message for event in errors],
        )


def _compile_records(engine, job_id: int) -> tuple[Optional[float], tuple[str, ...]]:
    """The seconds the job's compile event reports (None without one), and its compile warnings."""
    from sqlmodel import select

    from mftd.db import new_session
    from mftd.tables import Event

    with new_session(engine) as session:
        events = session.exec(select(Event).where(Event.job_id == job_id, Event.kind == "compile").order_by(Event.id)).all()
        seconds = [json.loads(event.data_json)["seconds"] for event in events if event.level == "info" and event.data_json]
        return (seconds[-1] if seconds else None), tuple(event.message for event in events if event.level == "warning")


def _plan_and_events(engine, job_id: int) -> tuple[dict[str, Any], list[str]]:
    """The job's memory plan as the worker left it (with ``peak_mb``), and its events' messages."""
    from sqlmodel import select

    from mftd.db import new_session
    from mftd.tables import Event, Job

    with new_session(engine) as session:
        job = session.get(Job, job_id)
        events = session.exec(select(Event).where(Event.job_id == job_id).order_by(Event.id)).all()
        return json.loads(job.memory_plan_json or "{}"), [event.message for event in events]
