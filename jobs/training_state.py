"""The small pieces of training state besides weights and optimizer: progress counters and RNG states.

Both go into every checkpoint. RNG states are captured after each optimizer step, because dropout
draws from them: when a stop throws away a half-done gradient accumulation, the checkpoint must hold
the generators as they were at the end of the last completed step, not as they are now.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy
import torch

PYTHON_RNG_KEY = "python"
NUMPY_RNG_KEY = "numpy"
TORCH_RNG_KEY = "torch"


@dataclass
class TrainingProgress:
    """Where training stands after the last completed optimizer step."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, int]) -> "TrainingProgress":
        return cls(**state)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, position, has_gauss, cached_gaussian = numpy.random.get_state()
    return {
        PYTHON_RNG_KEY: random.getstate(),
        NUMPY_RNG_KEY: {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(numpy.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        TORCH_RNG_KEY: torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put the global generators back to a state from ``capture_rng_state``."""
    version, internal_state, gauss_next = state[PYTHON_RNG_KEY]
    random.setstate((version, tuple(internal_state), gauss_next))
    saved_numpy = state[NUMPY_RNG_KEY]
    numpy.random.set_state(
        (
            saved_numpy["kind"],
            saved_numpy["keys"].numpy().astype(numpy.uint32),
            saved_numpy["position"],
            saved_numpy["has_gauss"],
            saved_numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state[TORCH_RNG_KEY])
