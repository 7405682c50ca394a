"""Liveness, without a token."""

from fastapi import APIRouter

import mftd
from api.schemas import HealthPublic

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", response_model=HealthPublic)
def read_health() -> HealthPublic:
    """Whether the daemon answers, and its version."""
    return HealthPublic(status="ok", version=mftd.__version__)
