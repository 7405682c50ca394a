"""Fixtures for the worker tests: tiny real models (built once per session), settings and a real SQLite database."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from sqlalchemy.engine import Engine

from mftd.db import make_engine
from mftd.settings import Settings
from tests.jobs.tiny_models import build_tiny_model


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from more threads, and on a busy 2-core machine extra threads only wait on each other.

    Reset for every test: ``run_worker`` sets the thread count the job asks for.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Callable[..., Path]:
    """``tiny_model(architecture="Qwen2ForCausalLM", with_chat_template=True)``: a cached tiny model folder (do not modify it)."""
    built: dict[tuple[str, bool], Path] = {}

    def get(architecture: str = "Qwen2ForCausalLM", with_chat_template: bool = True) -> Path:
        key = (architecture, with_chat_template)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"{architecture}-{'chat' if with_chat_template else 'plain'}")
            built[key] = build_tiny_model(folder, architecture, with_chat_template)
        return built[key]

    return get


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    return settings


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = make_engine(settings.db_path)
    yield engine
    engine.dispose()
