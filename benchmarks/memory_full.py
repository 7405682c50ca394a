"""Full fine-tuning under a hard memory cap: mftd's worker and Hugging Face Trainer, each in its own capped cgroup.

Gemma 3 270M (real weights) gets 1.5 GiB and a model with Qwen2.5-0.5B's exact config (random
weights, about 494M parameters) gets 3 GiB. Both trainers see the same text examples, each cut at
256 tokens, effective batch 4, AdamW (lr 1e-5, cosine, clip 1.0), seed 0, for ``--steps`` optimizer steps.

- mftd runs a real full fine-tuning job through its worker (``python -m jobs.worker``), with
  ``memory_budget_mb`` equal to the cap and nothing else about memory: the planner picks
  micro-batch (4 as submitted, or fewer with more accumulation), checkpointing and sharding.
- Trainer runs float32 with adamw_torch and its other defaults, micro-batch 1 with 4 accumulation
  steps: the smallest activation footprint for the same effective batch, the setting a user facing
  a memory cap would pick first.

Each side reports completed steps (a killed child still tells how far it got), the cgroup's peak
usage (anonymous memory plus page cache charged to it) and the child's peak RSS, tokens per second
after the first step, and whether the kernel OOM-killed it; for mftd also the planner's estimate
against the measured peak RSS. Peak RSS can exceed the cap: it also counts pages of the model file
that were already in the page cache, which stay charged to the group that read them first.

    sudo python benchmarks/memory_full.py [--models gemma3,qwen05b] [--steps 20] [--cap-mb N]

``--cap-mb`` replaces both caps (and so mftd's budget), to see how a run's peak RSS follows the cap:
a sharded run keeps mapped pages of its shard files resident while the cap leaves room for them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cgroup import CappedRun, check_cgroup_support, run_capped  # noqa: E402
from mftd.protocol import WORKER_MALLOC_ENV  # noqa: E402
from benchmarks.common import (  # noqa: E402
    EFFECTIVE_BATCH,
    MODEL_BUILDERS,
    MODEL_NAMES,
    ROOT,
    SEED,
    SEQUENCE,
    quiet_transformers,
    read_steps,
    relative_error,
    run_trainer,
    write_text_examples,
)

CAPS_MB = {"gemma3": 1536, "qwen05b": 3072}
LEARNING_RATE = 1e-5
TRAINER_MICRO_BATCH = 1
RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    runner: str
    model: str
    cap_mb: int
    steps_done: int
    run: CappedRun
    tokens_per_second: Optional[float]
    estimate_mb: Optional[float] = None
    note: str = ""


def measure_trainer(name: str, model_dir: Path, data: Path, steps: int, threads: int) -> Row:
    command = [sys.executable, str(Path(__file__).resolve()), "--child-trainer", "--model-dir", str(model_dir), "--data", str(data),
               "--steps", str(steps), "--threads", str(threads)]
    run = run_capped(f"trainer-{name}", command, CAPS_MB[name], ROOT, dict(os.environ))
    results = [json.loads(line[len(RESULT_PREFIX):]) for line in run.output.splitlines() if line.startswith(RESULT_PREFIX)]
    steps_done = len(read_steps(run.output))
    speed = results[0]["tokens_per_second"] if results else _speed_from_steps(run.output)
    return Row("HF Trainer", MODEL_NAMES[name], CAPS_MB[name], steps_done, run, speed, note=_failure_note(run, steps_done, []))


def _speed_from_steps(output: str) -> Optional[float]:
    seconds = [step["seconds"] for step in read_steps(output)][1:]
    return EFFECTIVE_BATCH * SEQUENCE * len(seconds) / sum(seconds) if seconds else None


def measure_mftd(name: str, model_dir: Path, data: Path, steps: int, threads: int) -> Row:
    """A full fine-tuning job run by mftd's own worker in the capped cgroup; steps and memory events come from its database."""
    from mftd.db import make_engine
    from mftd.settings import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir))
        settings.ensure_dirs()
        engine = make_engine(settings.db_path)
        job_id = _create_full_job(engine, model_dir, data, steps, CAPS_MB[name], threads)
        environment = {**os.environ, **WORKER_MALLOC_ENV}  # as the daemon starts its workers
        command = [sys.executable, "-m", "jobs.worker", str(job_id), "--data-dir", data_dir]
        run = run_capped(f"mftd-{name}", command, CAPS_MB[name], ROOT, environment)
        metrics, events = _job_records(engine, job_id)
    timed = [metric for metric in metrics if metric["step"] > 1]
    speed = sum(m["tokens"] for m in timed) / sum(m["tokens"] / m["tokens_per_second"] for m in timed) if timed else None
    plan = next((event for event in events if event["message"].startswith("memory plan:")), None)
    errors = [event["message"] for event in events if event["level"] == "error"]
    note = _failure_note(run, len(metrics), errors)
    return Row("mftd", MODEL_NAMES[name], CAPS_MB[name], len(metrics), run, speed, plan["data"]["estimate_mb"] if plan else None, note)


def _create_full_job(engine, model_dir: Path, data: Path, steps: int, cap_mb: int, threads: int) -> int:
    """Model, dataset and job rows as the API would write them; the job is full fine-tuning under ``cap_mb``."""
    from mftd.db import new_session
    from mftd.jobconfig import JobConfig
    from mftd.modelinfo import inspect_model_folder
    from mftd.tables import Dataset, Job, Model

    # Micro-batch, checkpointing and sharding are left to the planner: the budget is all the job says about memory.
    config = JobConfig(
        method="full", batch_size=EFFECTIVE_BATCH, grad_accum_steps=1, max_steps=steps, max_seq_len=SEQUENCE, learning_rate=LEARNING_RATE,
        lr_schedule="cosine", max_grad_norm=1.0, seed=SEED, memory_budget_mb=cap_mb, num_threads=threads,
        checkpoint_every_steps=max(steps, 1), keep_checkpoints=1, log_every_steps=1, dataset_format="text",
    )
    info = inspect_model_folder(model_dir)
    with new_session(engine) as session:
        model = Model(name="bench-model", **{key: value for key, value in info.to_dict().items()})
        dataset = Dataset(name="bench-data", path=str(data), format="text", num_examples=steps * EFFECTIVE_BATCH, size_bytes=data.stat().st_size)
        session.add(model)
        session.add(dataset)
        session.commit()
        job = Job(model_id=model.id, dataset_id=dataset.id, config_json=config.model_dump_json(exclude_none=True))
        session.add(job)
        session.commit()
        return job.id


def _job_records(engine, job_id: int) -> tuple[list[dict], list[dict]]:
    from sqlmodel import select

    from mftd.db import new_session
    from mftd.tables import Event, Metric

    with new_session(engine) as session:
        metrics = session.exec(select(Metric).where(Metric.job_id == job_id, Metric.split == "train").order_by(Metric.step)).all()
        events = session.exec(select(Event).where(Event.job_id == job_id).order_by(Event.id)).all()
        return (
            [{"step": m.step, "tokens": m.tokens, "tokens_per_second": m.tokens_per_second} for m in metrics],
            [{"message": e.message, "level": e.level, "data": json.loads(e.data_json or "{}")} for e in events],
        )


def _failure_note(run: CappedRun, steps_done: int, error_events: list[str]) -> str:
    """Why a run did not finish: the kernel's OOM kill, the job's error event, or the child's last line."""
    if run.succeeded:
        return ""
    if run.oom_killed:
        return f"OOM-killed during step {steps_done + 1}"
    if error_events:
        return error_events[-1][:160]
    lines = [line for line in run.output.splitlines() if line.strip()]
    return (lines or [f"exit status {run.exit_status}, no output"])[-1][:160]


def print_progress(row: Row, steps: int) -> None:
    print(f"{row.runner} on {row.model}: {row.steps_done}/{steps} steps, exit status {row.run.exit_status}, "
          f"OOM killed {row.run.oom_killed}" + (f" ({row.note})" if row.note else ""), flush=True)


def print_table(rows: list[Row], steps: int) -> None:
    print()
    print(f"Full fine-tuning, sequence {SEQUENCE}, effective batch {EFFECTIVE_BATCH}, AdamW lr {LEARNING_RATE}, {steps} steps; "
          f"Trainer micro-batch {TRAINER_MICRO_BATCH} x {EFFECTIVE_BATCH // TRAINER_MICRO_BATCH} accumulation, float32")
    print("| runner | model | cap | steps | cgroup peak | peak RSS | tokens/s | OOM killed | planner estimate (error vs peak RSS) | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        speed = f"{row.tokens_per_second:,.0f}" if row.tokens_per_second else "-"
        estimate = "-"
        if row.estimate_mb is not None and row.run.succeeded:
            estimate = f"{row.estimate_mb:,.0f} MB ({relative_error(row.estimate_mb, row.run.peak_rss_mb):+.0%})"
        elif row.estimate_mb is not None:  # a killed run's peak is the cap, not what the run would have needed
            estimate = f"{row.estimate_mb:,.0f} MB (run killed, no peak to compare)"
        print(f"| {row.runner} | {row.model} | {row.cap_mb:,} MB | {row.steps_done}/{steps} | {row.run.cgroup_max_usage_mb:,.0f} MB "
              f"| {row.run.peak_rss_mb:,.0f} MB | {speed} | {'yes' if row.run.oom_killed else 'no'} | {estimate} | {row.note} |")


def child_trainer(args: argparse.Namespace) -> int:
    import torch

    quiet_transformers()
    torch.set_num_threads(args.threads)
    result = run_trainer(args.model_dir, args.data, args.steps, TRAINER_MICRO_BATCH, LEARNING_RATE)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma3,qwen05b", help="Comma-separated: gemma3, qwen05b.")
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps per run (the first is not timed).")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runners", default="mftd,trainer", help="Comma-separated: mftd, trainer.")
    parser.add_argument("--cap-mb", type=int, help="Cap (and mftd's memory budget) for every model instead of 1.5 GiB / 3 GiB.")
    parser.add_argument("--child-trainer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_trainer:
        return child_trainer(args)
    problem = check_cgroup_support()
    if problem:
        sys.exit(f"cannot cap memory: {problem}")
    names = args.models.split(",")
    unknown = [name for name in names if name not in CAPS_MB]
    if unknown:
        sys.exit(f"unknown models {unknown}; choose from {', '.join(CAPS_MB)}")
    runners = args.runners.split(",")
    if args.cap_mb is not None:
        if args.cap_mb < 256:
            sys.exit(f"--cap-mb {args.cap_mb} is below 256 MB, too little for any of these models; give a cap in MB, e.g. 2560")
        CAPS_MB.update({name: args.cap_mb for name in names})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_text_examples(Path(tmp) / "text.jsonl", args.steps * EFFECTIVE_BATCH)
        for name in names:
            model_dir = MODEL_BUILDERS[name]()
            if "mftd" in runners:
                rows.append(measure_mftd(name, model_dir, data, args.steps, args.threads))
                print_progress(rows[-1], args.steps)
            if "trainer" in runners:
                rows.append(measure_trainer(name, model_dir, data, args.steps, args.threads))
                print_progress(rows[-1], args.steps)
    print_table(rows, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
