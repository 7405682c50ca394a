"""The ``/v1`` router: health and the login-code exchange are open, every other resource needs the bearer token."""

from fastapi import APIRouter

from api.deps import CurrentAuth
from api.routes import (
    auth,
    dataset_tokens,
    datasets,
    device,
    health,
    job_outputs,
    job_results,
    jobs,
    live,
    models,
    openai_files,
    openai_fine_tuning,
)

api_router = APIRouter(prefix="/v1")
api_router.include_router(health.router)
api_router.include_router(auth.router)  # each auth route names its own credential: the token, or a one-time login code
for protected in (
    device.router,
    models.router,
    datasets.router,
    dataset_tokens.router,
    jobs.router,
    job_outputs.router,
    job_results.router,
    live.router,
    openai_files.router,
    openai_fine_tuning.router,
):
    api_router.include_router(protected, dependencies=[CurrentAuth])
