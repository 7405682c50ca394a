from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.daemon_process import DaemonProcess
from tests.jobs.tiny_models import build_tiny_model


@pytest.fixture
def daemon(tmp_path: Path):
    process = DaemonProcess(tmp_path / "data")
    process.data_dir.mkdir()
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2", "Qwen2ForCausalLM")


@pytest.fixture
def chat_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    topics = ["the sea", "a phone", "the moon", "bread", "a river", "the wind", "a book", "rain"]
    with path.open("w") as f:
        for index in range(32):
            topic = topics[index % len(topics)]
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"tell me about {topic} number {index}"},
                {"role": "assistant", "content": f"{topic} is a fine thing and number {index} is even finer"},
            ]}) + "\n")
    return path
