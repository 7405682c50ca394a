"""``use_cores`` on this machine: the worker pinned to its cores, torch's threads set, and the event that says so."""

from __future__ import annotations

import json
import os

import torch

from jobs.cores import use_cores
from jobs.reporting import JobReporter
from mftd.cpu import performance_cores
from tests.jobs.helpers import create_job, job_events, prompt_completion_records, write_jsonl


def reporter_for_a_job(tmp_path, engine, tiny_model) -> JobReporter:
    job_id = create_job(engine, tiny_model(), write_jsonl(tmp_path / "pc.jsonl", prompt_completion_records(2)))
    return JobReporter(engine, job_id)


def test_the_default_pins_to_the_performance_cores(tmp_path, engine, tiny_model):
    reporter = reporter_for_a_job(tmp_path, engine, tiny_model)
    performance = performance_cores()
    assert use_cores(len(performance), reporter) == performance
    assert sorted(os.sched_getaffinity(0)) == performance and torch.get_num_threads() == len(performance)
    [event] = job_events(engine, reporter.job_id)
    assert event.level == "info" and event.message.startswith(f"threads: {len(performance)} on cores ")
    data = json.loads(event.data_json)
    assert (data["cores"], data["performance_cores"], data["pinned"]) == (performance, performance, True)


def test_more_threads_than_cores_is_a_warning(tmp_path, engine, tiny_model):
    reporter = reporter_for_a_job(tmp_path, engine, tiny_model)
    allowed = sorted(os.sched_getaffinity(0))
    assert use_cores(len(allowed) + 1, reporter) == allowed
    assert torch.get_num_threads() == len(allowed) + 1
    [event] = job_events(engine, reporter.job_id)
    assert event.level == "warning" and "wait for each other" in event.message
