"""The plan's allocator setting in a real process: mallopt moves glibc's mmap threshold, and a user's own threshold wins.

Each case runs in a child process, so that the test process's allocator is left as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from jobs.allocator import load_glibc
from jobs.data import tokenize_dataset
from jobs.model_setup import load_tokenizer
from mftd.memory_plan import ModelShape, plan_memory, plan_request
from mftd.jobconfig import JobConfig
from mftd.protocol import EXIT_SUCCEEDED, MALLOC_DEFAULTS_ENV, users_allocator, worker_command, worker_environment
from tests.jobs.helpers import create_job, job_events, write_jsonl
from tests.jobs.tiny_models import WORDS

pytestmark = pytest.mark.skipif(load_glibc() is None, reason="mallopt's parameters are glibc's")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
USER_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
# Sets the allocator named in argv[1], then says whether a 4 MB malloc got its own mapping (glibc's hblks count).
CHILD = """
import ctypes, json, sys
from jobs.allocator import set_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
outcome = set_allocator(sys.argv[1])
before = libc.mallinfo2().hblks
pointer = libc.malloc(4 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(ctypes.c_void_p(pointer))
print(json.dumps({"applied": outcome.applied, "reason": outcome.reason, "mapped": mapped}))
"""


def clean_environment(**extra: str) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_") and name != MALLOC_DEFAULTS_ENV}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**environment, **extra}


def set_in_child(setting: str, environment: dict[str, str]) -> dict:
    child = subprocess.run([sys.executable, "-c", CHILD, setting], cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_mallopt_moves_the_mmap_threshold_of_a_worker_started_lean():
    started_lean = worker_environment(clean_environment())
    fast = set_in_child("fast", started_lean)
    lean = set_in_child("lean", started_lean)
    assert (fast["applied"], fast["mapped"]) == (True, 0)  # 4 MB is below 16 MB: from the heap
    assert (lean["applied"], lean["mapped"]) == (True, 1)  # and above 1 MB: its own mapping
    assert fast["reason"].startswith("mallopt on glibc ")


def test_a_threshold_the_user_set_wins_over_the_plan():
    by_user = worker_environment(clean_environment(**USER_THRESHOLD))
    outcome = set_in_child("fast", by_user)
    assert (outcome["applied"], outcome["mapped"]) == (False, 1)
    assert outcome["reason"] == "MALLOC_MMAP_THRESHOLD_=1048576 set in the environment, which the plan counts"


def test_the_plan_counts_the_setting_a_users_threshold_amounts_to():
    assert users_allocator(worker_environment(clean_environment())) is None, "the daemon's own default leaves the plan to choose"
    assert users_allocator(worker_environment(clean_environment(**USER_THRESHOLD))) == "lean"
    assert users_allocator(worker_environment(clean_environment(MALLOC_MMAP_THRESHOLD_=str(32 << 20)))) == "fast"
    assert users_allocator(worker_environment(clean_environment(MALLOC_MMAP_THRESHOLD_="lots"))) is None


def run_worker_process(settings, engine, model: Path, data: Path, environment: dict[str, str], **config) -> list[str]:
    job_id = create_job(engine, model, data, max_steps=1, batch_size=2, grad_accum_steps=1, num_threads=1, **config)
    worker = subprocess.run(worker_command(job_id, settings.data_dir), cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True)
    assert worker.returncode == EXIT_SUCCEEDED, worker.stdout + worker.stderr
    return [event.message for event in job_events(engine, job_id) if event.message.startswith("allocator:")]


@pytest.mark.slow
def test_the_worker_applies_the_plans_allocator_and_names_it_in_its_events(tmp_path, settings, engine, tiny_model):
    model = tiny_model()
    # Examples cut at 256 tokens: micro-batch 2's attention scores (2 MB) lie between the two thresholds, so the fast setting has a slack.
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": " ".join(WORDS[(start + i) % len(WORDS)] for i in range(400))} for start in range(4)])
    roomy = run_worker_process(settings, engine, model, data, worker_environment(clean_environment()), memory_budget_mb=20_000)
    assert len(roomy) == 1 and roomy[0].startswith("allocator: fast (mmap threshold 16 MB, mallopt on glibc ")
    by_user = run_worker_process(settings, engine, model, data, worker_environment(clean_environment(**USER_THRESHOLD)), memory_budget_mb=20_000)
    # The user's 1 MB threshold is left as it is, and the plan counts it: lean, though the budget has room for fast.
    assert by_user == ["allocator: lean (MALLOC_MMAP_THRESHOLD_=1048576 set in the environment, which the plan counts)"]
    # A budget with room for the lean plan but not for the fast one's slack (base_dtype set, so the plan does not depend on the CPU).
    shape = ModelShape.from_config(AutoConfig.from_pretrained(model))
    config = JobConfig(max_steps=1, batch_size=2, grad_accum_steps=1, base_dtype="float32", max_seq_len=256)
    longest = max(len(example.input_ids) for example in tokenize_dataset(data, load_tokenizer(model), "auto", config.max_seq_len).examples)
    lean_estimate = plan_memory(shape, plan_request(config, 100_000, longest)).estimate
    tight = int(lean_estimate.total - lean_estimate.allocator_slack) + 1
    tight_plan = plan_memory(shape, plan_request(config, tight, longest))
    assert tight_plan.allocator == "lean" and tight_plan.fits and lean_estimate.allocator_slack > 1
    lean = run_worker_process(settings, engine, model, data, worker_environment(clean_environment()), memory_budget_mb=tight, base_dtype="float32",
                              max_seq_len=256)
    assert len(lean) == 1 and lean[0].startswith("allocator: lean (mmap threshold 1 MB, mallopt on glibc ")
