"""Checkpoints on disk: everything needed to continue a run bit for bit, written so that a crash never leaves a half one.

A checkpoint is a folder ``checkpoints/step-00000042`` holding

- ``trainable_weights.safetensors``: the trainable parameters (the adapter, or the whole model);
- ``training_state.pt``: optimizer state, LR-scheduler state, progress and RNG states, under named keys;
- ``config.json``: the resolved job config it was trained with;
- with parameter sharding, copies of the shard files (``weights.f32`` and the AdamW moments), the
  trainable weights file then being empty;
- ``manifest.json``: size and sha256 of each file above, written last.

It is written into a temporary folder, every file fsynced, then renamed into place. Only a folder
whose manifest matches its files counts as a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from jobs.errors import CorruptCheckpointError
from jobs.training_state import TrainingProgress

TRAINABLE_WEIGHTS_FILENAME = "trainable_weights.safetensors"
TRAINING_STATE_FILENAME = "training_state.pt"
CONFIG_FILENAME = "config.json"
MANIFEST_FILENAME = "manifest.json"
REQUIRED_FILENAMES = (TRAINABLE_WEIGHTS_FILENAME, TRAINING_STATE_FILENAME, CONFIG_FILENAME)
OPTIMIZER_KEY = "optimizer"
LR_SCHEDULER_KEY = "lr_scheduler"
PROGRESS_KEY = "progress"
RNG_KEY = "rng"
TEMPORARY_PREFIX = ".tmp-"
CHECKPOINT_NAME = re.compile(r"^step-(\d{8})$")
MANIFEST_VERSION = 1
HASH_CHUNK_BYTES = 1 << 20


@dataclass
class CheckpointContents:
    """What a checkpoint holds, in memory."""

    trainable_weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    lr_scheduler_state: dict[str, Any]
    progress: TrainingProgress
    rng_state: dict[str, Any]
    config: dict[str, Any]
    # Files copied as they are (sharded weights and optimizer moments), by their name in the checkpoint.
    shard_files: dict[str, Path] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(folder: Path) -> int:
    """The optimizer step a checkpoint folder is of, from its name."""
    match = CHECKPOINT_NAME.match(folder.name)
    if match is None:
        raise ValueError(f"{folder.name} is not a checkpoint folder name (step-NNNNNNNN)")
    return int(match.group(1))


def checkpoint_folders(checkpoints_dir: Path) -> list[Path]:
    """The ``step-*`` folders in ``checkpoints_dir``, newest step first (complete or not)."""
    if not checkpoints_dir.is_dir():
        return []
    folders = [path for path in checkpoints_dir.iterdir() if path.is_dir() and CHECKPOINT_NAME.match(path.name)]
    return sorted(folders, key=checkpoint_step, reverse=True)


def folder_size_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def write_checkpoint(checkpoints_dir: Path, contents: CheckpointContents) -> Path:
    """Write a complete checkpoint of ``contents.progress.step``, replacing one of the same step.

    Args:
        checkpoints_dir: the job's checkpoints folder (created if missing).
        contents: what to save.

    Returns:
        The checkpoint folder.
    """
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(contents.progress.step)
    temporary = checkpoints_dir / f"{TEMPORARY_PREFIX}{name}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    # safetensors refuses views of shared storage; contiguous copies of the trainable tensors are small enough.
    save_file({key: value.contiguous() for key, value in contents.trainable_weights.items()}, temporary / TRAINABLE_WEIGHTS_FILENAME)
    torch.save(
        {
            OPTIMIZER_KEY: contents.optimizer_state,
            LR_SCHEDULER_KEY: contents.lr_scheduler_state,
            PROGRESS_KEY: contents.progress.state_dict(),
            RNG_KEY: contents.rng_state,
        },
        temporary / TRAINING_STATE_FILENAME,
    )
    (temporary / CONFIG_FILENAME).write_text(json.dumps(contents.config, indent=2, sort_keys=True) + "\n")
    for filename, source in contents.shard_files.items():
        shutil.copyfile(source, temporary / filename)  # streamed by the kernel, never whole in memory
    files = {}
    for filename in (TRAINABLE_WEIGHTS_FILENAME, TRAINING_STATE_FILENAME, CONFIG_FILENAME, *contents.shard_files):
        _fsync_file(temporary / filename)
        files[filename] = {"sha256": _sha256(temporary / filename), "size": (temporary / filename).stat().st_size}
    manifest = {"version": MANIFEST_VERSION, "step": contents.progress.step, "files": files}
    (temporary / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _fsync_file(temporary / MANIFEST_FILENAME)
    _fsync_directory(temporary)
    final = checkpoints_dir / name
    if final.exists():
        shutil.rmtree(final)
    temporary.rename(final)
    _fsync_directory(checkpoints_dir)
    return final


def verify_checkpoint(folder: Path) -> None:
    """Check that ``folder`` is a complete checkpoint.

    Raises:
        CorruptCheckpointError: no readable manifest, a listed file missing, or a size or checksum that differs.
    """
    try:
        manifest = json.loads((folder / MANIFEST_FILENAME).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpointError(f"checkpoint {folder} has no readable manifest ({error}); it was not finished") from error
    if not set(files) >= set(REQUIRED_FILENAMES):
        raise CorruptCheckpointError(f"checkpoint {folder} manifest lists {sorted(files)}, not all of {list(REQUIRED_FILENAMES)}")
    for filename, expected in files.items():
        path = folder / filename
        if not path.is_file():
            raise CorruptCheckpointError(f"checkpoint {folder} is missing {filename}")
        if path.stat().st_size != expected["size"] or _sha256(path) != expected["sha256"]:
            raise CorruptCheckpointError(f"checkpoint {folder}: {filename} does not match its checksum in the manifest")


def read_checkpoint(folder: Path) -> CheckpointContents:
    """Load a checkpoint (verify it first with ``verify_checkpoint``)."""
    state = torch.load(folder / TRAINING_STATE_FILENAME, map_location="cpu", weights_only=True)
    return CheckpointContents(
        trainable_weights=load_file(folder / TRAINABLE_WEIGHTS_FILENAME),
        optimizer_state=state[OPTIMIZER_KEY],
        lr_scheduler_state=state[LR_SCHEDULER_KEY],
        progress=TrainingProgress.from_state_dict(state[PROGRESS_KEY]),
        rng_state=state[RNG_KEY],
        config=read_checkpoint_config(folder),
        shard_files={filename: folder / filename for filename in _manifest_files(folder) if filename not in REQUIRED_FILENAMES},
    )


def _manifest_files(folder: Path) -> list[str]:
    return list(json.loads((folder / MANIFEST_FILENAME).read_text())["files"])


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    """The resolved config a checkpoint was trained with (cheap: weights and state stay on disk)."""
    return json.loads((folder / CONFIG_FILENAME).read_text())


def remove_checkpoints(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoint folders, and temporary folders left by a crash.

    Returns:
        The checkpoint folders deleted (temporary ones are not listed).
    """
    if not checkpoints_dir.is_dir():
        return []
    remove_checkpoints(list(checkpoints_dir.glob(f"{TEMPORARY_PREFIX}*")))
    removed = checkpoint_folders(checkpoints_dir)[keep:]
    remove_checkpoints(removed)
    return removed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())


def _fsync_directory(path: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open a directory for fsync, and then the rename is as durable as they allow.
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
