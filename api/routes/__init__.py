"""The ``/v1`` router: health is open, every other resource needs the bearer token."""

from fastapi import APIRouter

from api.deps import CurrentAuth
from api.routes import datasets, device, health, job_outputs, jobs, models

api_router = APIRouter(prefix="/v1")
api_router.include_router(health.router)
for protected in (device.router, models.router, datasets.router, jobs.router, job_outputs.router):
    api_router.include_router(protected, dependencies=[CurrentAuth])
