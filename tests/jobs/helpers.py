"""Helpers for worker tests: sample datasets, job rows in a real SQLite database, a scripted stop."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file
from sqlalchemy.engine import Engine
from sqlmodel import select

from jobs.stop import StopSignal
from mftd.db import new_session
from mftd.protocol import ADAPTER_DIRNAME, FULL_MODEL_DIRNAME
from mftd.settings import Settings
from mftd.tables import Checkpoint, Dataset, Event, Job, Metric, Model
from tests.jobs.tiny_models import WORDS


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def chat_records(count: int, seed: int = 0) -> list[dict]:
    """Conversations whose answer is the question's first word said twice: learnable by a tiny model."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        question = rng.choices(WORDS[10:60], k=rng.randint(3, 6))
        records.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(question)},
                    {"role": "assistant", "content": f"{question[0]} {question[0]} ."},
                ]
            }
        )
    return records


def prompt_completion_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 5))), "completion": " ".join(rng.choices(WORDS[:12], k=3))}
        for _ in range(count)
    ]


def text_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choices(WORDS, k=rng.randint(4, 9)))} for _ in range(count)]


def create_job(engine: Engine, model_path: Path, dataset_path: Path, **config: Any) -> int:
    """Insert a Model, a Dataset and a queued Job row (as the API would) and return the job id."""
    with new_session(engine) as session:
        model_count = len(session.exec(select(Model)).all())
        model = Model(
            name=f"model-{model_count}", path=str(model_path), architecture="", model_type="", num_parameters=0,
            dtype="float32", context_length=256, has_chat_template=True,
        )
        dataset = Dataset(name=f"dataset-{model_count}", path=str(dataset_path), format="auto", num_examples=0, size_bytes=0)
        session.add(model)
        session.add(dataset)
        session.commit()
        job = Job(model_id=model.id, dataset_id=dataset.id, config_json=json.dumps(config))
        session.add(job)
        session.commit()
        return job.id


def train_metrics(engine: Engine, job_id: int) -> list[tuple]:
    """(step, loss, learning_rate, grad_norm, tokens) of each logged training step, in step order."""
    with new_session(engine) as session:
        rows = session.exec(select(Metric).where(Metric.job_id == job_id, Metric.split == "train").order_by(Metric.step)).all()
    return [(row.step, row.loss, row.learning_rate, row.grad_norm, row.tokens) for row in rows]


def job_events(engine: Engine, job_id: int) -> list[Event]:
    with new_session(engine) as session:
        return list(session.exec(select(Event).where(Event.job_id == job_id).order_by(Event.id)).all())


def job_row(engine: Engine, job_id: int) -> Job:
    with new_session(engine) as session:
        return session.get(Job, job_id)


def checkpoint_rows(engine: Engine, job_id: int) -> list[Checkpoint]:
    with new_session(engine) as session:
        return list(session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all())


def final_weights(settings: Settings, job_id: int, method: str = "lora") -> dict[str, torch.Tensor]:
    """The tensors of a finished job's adapter (or full model)."""
    folder = settings.job_dir(job_id) / (FULL_MODEL_DIRNAME if method == "full" else ADAPTER_DIRNAME)
    [weights_file] = folder.glob("*.safetensors")
    return load_file(weights_file)


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"


class StopAtMicroBatch(StopSignal):
    """A stop source scripted like a SIGTERM that arrives during micro-batch ``count`` of this run.

    The training loop asks once before each micro-batch, so exactly ``count`` micro-batches run.
    """

    def __init__(self, count: int):
        super().__init__()
        self._remaining = count

    def is_requested(self) -> bool:
        if self._remaining == 0:
            self.request("scripted stop")
        self._remaining -= 1
        return super().is_requested()
