"""Import a GGUF file as a model through the daemon: a child process converts it, a thread follows it.

``start_import`` adds the model row at once with ``status`` ``importing`` and starts
``python -m jobs.gguf_import FILE OUT_DIR`` (torch stays out of the daemon). A thread reads the
converter's JSON progress lines into the row (``progress``, ``status_message``), then inspects the
finished folder and marks the row ``ready``, or ``failed`` with the converter's message; a failed
import leaves no folder behind. A daemon that stops mid-import finds the row still ``importing`` at
its next start: ``fail_unfinished_imports`` marks it failed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mftd.db import new_session
from mftd.errors import InvalidValueError, ModelValidationError
from mftd.modelinfo import inspect_model_folder
from mftd.registry.lookup import check_name, check_name_free, insert
from mftd.settings import Settings
from mftd.tables import Model

logger = logging.getLogger(__name__)

GGUF_IMPORT_MODULE = "jobs.gguf_import"
STATUS_IMPORTING, STATUS_READY, STATUS_FAILED = "importing", "ready", "failed"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def is_gguf_path(path: str) -> bool:
    return str(path).lower().endswith(".gguf")


def start_import(
    session: Session, engine: Engine, settings: Settings, name: str, gguf_path: str, on_change: Optional[Callable[[], None]] = None
) -> Model:
    """Register ``name`` as an importing model and convert ``gguf_path`` into ``<data dir>/models/<name>`` in the background.

    Raises:
        InvalidValueError: the name is not usable, or the file is missing or not a .gguf file.
        ConflictError: the name is taken.
        ModelValidationError: the output folder already exists.
    """
    check_name(name)
    check_name_free(session, Model, name, "model")
    source = Path(gguf_path).expanduser()
    if not source.is_absolute() or not source.is_file() or not is_gguf_path(str(source)):
        raise InvalidValueError("path", f"{gguf_path} is not an existing .gguf file; give the absolute path of a GGUF file.")
    out_dir = settings.models_dir / name
    if out_dir.exists():
        raise ModelValidationError(f"{out_dir} already exists; pick another name, or register that folder as it is.")
    model = Model(
        name=name, path=str(out_dir), source_path=str(source), architecture="", model_type="", num_parameters=0,
        dtype="", context_length=0, has_chat_template=False, status=STATUS_IMPORTING, progress=0.0,
        status_message="starting the converter",
    )
    model = insert(session, model, "model")
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    command = [settings.worker_python or sys.executable, "-m", GGUF_IMPORT_MODULE, str(source), str(out_dir)]
    thread = threading.Thread(
        target=_follow_import, args=(engine, model.id, command, out_dir, on_change), name=f"import-{name}", daemon=True
    )
    thread.start()
    return model


def fail_unfinished_imports(engine: Engine) -> int:
    """Mark imports that a previous daemon left running as failed; returns how many there were."""
    with new_session(engine) as session:
        rows = session.exec(select(Model).where(Model.status == STATUS_IMPORTING)).all()
        for row in rows:
            row.status = STATUS_FAILED
            row.status_message = "the daemon stopped during the import; delete this model and import the file again"
            session.add(row)
        session.commit()
        return len(rows)


def _follow_import(engine: Engine, model_id: int, command: list[str], out_dir: Path, on_change: Optional[Callable[[], None]]) -> None:
    last_message = ""
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=_child_env())
        assert process.stdout is not None
        for line in process.stdout:
            payload = _parse(line)
            if payload is None:
                continue
            last_message = str(payload.get("message") or last_message)
            if payload.get("stage") not in ("done", "error"):
                _update(engine, model_id, progress=float(payload.get("progress") or 0.0), status_message=last_message or payload.get("stage"))
        code = process.wait()
        if code != 0:
            raise ModelValidationError(f"{last_message or 'the converter printed nothing'} (exit code {code})")
        info = inspect_model_folder(out_dir)
        _update(
            engine, model_id, status=STATUS_READY, progress=1.0, status_message="imported", path=info.path,
            architecture=info.architecture, model_type=info.model_type, num_parameters=info.num_parameters,
            dtype=info.dtype, context_length=info.context_length, has_chat_template=info.has_chat_template,
        )
    except Exception as error:
        logger.warning("import of model %s failed: %s", model_id, error)
        shutil.rmtree(out_dir, ignore_errors=True)
        _update(engine, model_id, status=STATUS_FAILED, status_message=f"import failed: {error}")
    if on_change is not None:
        on_change()


def _parse(line: str) -> Optional[dict[str, Any]]:
    line = line.strip()
    if not line:
        return None
    try:
        payload = json.loads(line)
    except ValueError:
        return {"message": line}
    return payload if isinstance(payload, dict) else None


def _update(engine: Engine, model_id: int, **values: Any) -> None:
    with new_session(engine) as session:
        row = session.get(Model, model_id)
        if row is None:  # deleted meanwhile
            return
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)
        session.commit()


def _child_env() -> dict[str, str]:
    env = dict(os.environ, TQDM_DISABLE="1")
    if str(PROJECT_ROOT) not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(PROJECT_ROOT)]))
    return env
