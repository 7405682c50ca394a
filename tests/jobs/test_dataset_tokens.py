"""Token counts of a dataset per registered model, through the API (counted in a child process)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from jobs.count_tokens import count_tokens
from tests.jobs.helpers import chat_records, write_jsonl

pytestmark = pytest.mark.slow


def test_tokens_per_model_match_the_tokenizer(tmp_path, settings, engine, tiny_model):
    dataset = write_jsonl(tmp_path / "chat.jsonl", chat_records(6))
    with TestClient(create_app(settings, engine), base_url="http://127.0.0.1") as client:
        client.headers["Authorization"] = f"Bearer {settings.token_path.read_text().strip()}"
        assert client.post("/v1/models", json={"name": "chatty", "path": str(tiny_model("Qwen2ForCausalLM"))}).status_code == 201
        assert client.post("/v1/models", json={"name": "plain", "path": str(tiny_model("GPT2LMHeadModel", with_chat_template=False))}).status_code == 201
        dataset_id = client.post("/v1/datasets", data={"name": "chat", "path": str(dataset)}).json()["id"]

        chatty = client.get(f"/v1/datasets/{dataset_id}/tokens", params={"model": "chatty", "max_seq_len": 8})
        plain = client.get(f"/v1/datasets/{dataset_id}/tokens", params={"model": "plain"})
        missing = client.get(f"/v1/datasets/{dataset_id}/tokens", params={"model": "nope"})

    assert chatty.status_code == 200, chatty.text
    expected = count_tokens(tiny_model("Qwen2ForCausalLM"), dataset, 8)
    assert chatty.json() == {"dataset_id": dataset_id, "model": "chatty", **expected}
    assert chatty.json()["examples"] == 6 and chatty.json()["longer_than_max_seq_len"] == 6
    assert plain.json()["used_fallback_chat_template"] is True and not chatty.json()["used_fallback_chat_template"]
    assert plain.json()["tokens"] != chatty.json()["tokens"]
    assert missing.status_code == 404 and "chatty" in missing.text
