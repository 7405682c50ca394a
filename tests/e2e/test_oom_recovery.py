"""A real daemon in a real memory cgroup: its worker is killed by the kernel's OOM killer, retried with a smaller micro-batch, and failed at micro-batch 1.

The models are small but read long examples, so activations dominate: micro-batch 8 needs far more
memory than micro-batch 4, and one example far more than loading the model. Needs root and a cgroup
v1 memory controller, as CI has (the tests fail, saying so, without them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from tests.e2e.daemon_process import DaemonProcess, wait_for_status
from tests.e2e.memory_cgroup import MemoryCgroup, cgroup_unavailable_reason
from tests.jobs.tiny_models import WORDS, build_tiny_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def memory_cgroups_available() -> None:
    reason = cgroup_unavailable_reason()
    if reason is not None:
        pytest.fail(f"these tests need a writable cgroup v1 memory controller (root, as in CI): {reason}")

# The cgroup limits come from the peak usage of the daemon's cgroup (memory.max_usage_in_bytes:
# daemon and worker, anonymous memory almost all of it), measured with no limit on a loaded 2-core
# machine with the workers' lean allocator setting (a 1 MB mmap threshold, mftd.protocol.MMAP_THRESHOLDS,
# which LEAN_ALLOCATOR_ENV keeps: the roomy budget would otherwise get the fast one), and sit about
# halfway between what must fit and what must not: about 300 MB from each.
SEQUENCE = 1024
MICRO_BATCH_8_MB = 1555  # the retry model at SEQUENCE, micro-batch 8
MICRO_BATCH_4_MB = 961  # the same at micro-batch 4
RETRY_LIMIT_MB = 1260
FAIL_SEQUENCE = 2048
LOADED_MB = 379  # the failing model loaded and through one step of 64 tokens (351 when it reports being loaded)
MICRO_BATCH_1_MB = 1029  # the failing model at FAIL_SEQUENCE, micro-batch 1, full fine-tuning
FAIL_LIMIT_MB = 700
LEAN_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}  # a threshold of the user's own wins over the plan's


def build_long_context_model(folder: Path, hidden: int = 256, intermediate: int = 1024, layers: int = 4, heads: int = 8) -> Path:
    """A Qwen2 model with 4096 positions and a few MB of weights, whose activations for a long example take hundreds of MB."""
    tokenizer = build_tiny_tokenizer()
    config = AutoConfig.for_model(
        "qwen2", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_long_texts(path: Path, words_per_text: int, count: int = 16) -> Path:
    """Texts longer than the sequence, so every example is truncated to exactly max_seq_len tokens."""
    with path.open("w") as file:
        for index in range(count):
            words = [WORDS[(index * 7 + position) % len(WORDS)] for position in range(words_per_text)]
            file.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


@pytest.fixture(scope="module")
def retry_model(tmp_path_factory) -> Path:
    """Attention and MLP activations grow with the micro-batch: 8 takes about 1.6 times the memory of 4.

    Its MLP is twice the default width: with the workers' lean allocator setting the gap between micro-batch
    8 and 4 at the default width is only 350 MB (1,073 against 720 MB).
    """
    return build_long_context_model(tmp_path_factory.mktemp("models") / "retry", intermediate=2048)


@pytest.fixture(scope="module")
def fail_model(tmp_path_factory) -> Path:
    """Narrow and very wide in its MLP: little compute, but one example of FAIL_SEQUENCE tokens needs far more than loading it."""
    return build_long_context_model(tmp_path_factory.mktemp("models") / "fail", hidden=32, intermediate=8192, layers=2, heads=4)


@pytest.fixture
def memory_cgroup():
    """``memory_cgroup(limit_mb)`` -> a fresh MemoryCgroup; each is removed after its processes exit."""
    made: list[MemoryCgroup] = []

    def _make(limit_mb: float) -> MemoryCgroup:
        made.append(MemoryCgroup(limit_mb))
        return made[-1]

    yield _make
    for cgroup in made:
        cgroup.remove()


def start_daemon_in(cgroup: MemoryCgroup, tmp_path: Path) -> DaemonProcess:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return DaemonProcess(data_dir, command_prefix=cgroup.command_prefix(), extra_env=LEAN_ALLOCATOR_ENV).start()


def submit(client, model: Path, texts: Path, **config) -> int:
    assert client.post("/v1/models", json={"name": "long", "path": str(model)}).status_code == 201
    with texts.open("rb") as file:
        assert client.post("/v1/datasets", data={"name": "texts"}, files={"file": ("texts.jsonl", file)}).status_code == 201
    body = {
        "model": "long", "dataset": "texts", "method": "lora", "max_steps": 1, "max_seq_len": SEQUENCE,
        # A budget far above the machine's memory: the planner keeps the micro-batch asked for, so the kernel decides.
        # Float32 and unpacked, as the limits above were measured (a CPU fast in bfloat16 would otherwise get a bfloat16 default).
        "memory_budget_mb": 60000, "gradient_checkpointing": False, "packing": False, **config,
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def memory_events(client, job_id: int) -> list[dict]:
    body = client.get(f"/v1/jobs/{job_id}/events").json()
    events = body["data"] if isinstance(body, dict) else body
    return [event for event in events if event["kind"] == "memory" and event["message"].startswith("the worker was killed for memory")]


def test_an_oom_killed_worker_is_retried_at_half_the_micro_batch_and_succeeds(tmp_path, retry_model, memory_cgroup):
    cgroup = memory_cgroup(RETRY_LIMIT_MB)
    daemon = start_daemon_in(cgroup, tmp_path)
    try:
        with daemon.client() as client:
            texts = write_long_texts(tmp_path / "texts.jsonl", words_per_text=2 * SEQUENCE)
            job_id = submit(client, retry_model, texts, batch_size=8, grad_accum_steps=1, base_dtype="float32")
            job = wait_for_status(client, job_id, {"succeeded"}, timeout=150)
            events = memory_events(client, job_id)
    finally:
        daemon.stop()
    assert cgroup.oom_kills == 1
    [event] = events
    assert event["level"] == "warning"
    assert event["message"].startswith("the worker was killed for memory (the out-of-memory killer) at micro-batch 8 x 1 (estimate ")
    assert event["message"].endswith("; retrying with micro-batch 4 x 2, same effective batch 8")
    assert (job["micro_batch_cap"], job["interruptions"], job["step"]) == (4, 0, 1)
    plan = job["memory_plan"]
    assert (plan["micro_batch"], plan["grad_accum_steps"], plan["effective_batch"], plan["gradient_checkpointing"]) == (4, 2, 8, False)


def test_a_worker_oom_killed_at_micro_batch_1_fails_with_the_planner_numbers(tmp_path, fail_model, memory_cgroup):
    cgroup = memory_cgroup(FAIL_LIMIT_MB)
    daemon = start_daemon_in(cgroup, tmp_path)
    try:
        with daemon.client() as client:
            texts = write_long_texts(tmp_path / "texts.jsonl", words_per_text=2 * FAIL_SEQUENCE)
            job_id = submit(client, fail_model, texts, method="full", batch_size=1, grad_accum_steps=2, max_seq_len=FAIL_SEQUENCE, compute_dtype="float32")
            job = wait_for_status(client, job_id, {"failed"}, timeout=120)
            events = memory_events(client, job_id)
    finally:
        daemon.stop()
    assert cgroup.oom_kills == 1
    reason = job["status_reason"]
    assert reason.startswith("the worker was killed for memory (the out-of-memory killer) at micro-batch 1 x 2, the smallest")
    plan = job["memory_plan"]
    names = ("weights", "gradients", "optimizer", "activations", "logits", "runtime")
    parts = ", ".join(f"{part} {plan['estimate'][part]:,.0f}" for part in names)
    slack = plan["estimate"].get("allocator_slack", 0.0)  # the plan's, though the worker kept LEAN_ALLOCATOR_ENV's threshold
    parts += f", allocator slack {slack:,.0f}" if slack else ""
    # The daemon adds up the stored parts, each rounded to 0.1 MB: their sum can round to another whole
    # MB than the stored total (parts adding up to 1,078.6 against an estimate_mb of 1,078.5).
    total = sum(plan["estimate"][part] for part in names) + slack
    assert f"The planner expected estimate {total:,.0f} MB ({parts}) against a budget of 60,000 MB" in reason
    for advice in ("max_seq_len", "method lora", "base_dtype bfloat16", "parameter_sharding", "smaller model", "free memory"):
        assert advice in reason
    assert [event["level"] for event in events] == ["error"]
    assert (job["micro_batch_cap"], job["interruptions"]) == (None, 0)
