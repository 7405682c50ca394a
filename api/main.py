"""The FastAPI application: ``create_app`` wires settings, the database engine and the scheduler nudge into the routes.

``/`` serves the dashboard (``api/static/dashboard.*``). Every request whose Host is not one of the
daemon's own names is refused (``api.hosts``), and no CORS headers are sent, so other sites' pages
can neither read the API nor reach it by DNS rebinding.

``/docs`` serves Swagger UI 5.31.0 from ``api/static`` (vendored from swagger-ui-dist, Apache-2.0,
see ``static/SWAGGER-UI-LICENSE.txt``) so it works on a phone without internet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine

import mftd
from api.errors import install_error_handlers
from api.hosts import LoopbackHostMiddleware, allowed_host_names
from api.login_codes import LoginCodes
from api.routes import api_router, dashboard
from mftd.settings import Settings
from mftd.token import load_or_create_token

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/static"


def create_app(
    settings: Settings,
    engine: Engine,
    on_change: Optional[Callable[[], None]] = None,
    *,
    sse_poll_seconds: float = 0.5,
) -> FastAPI:
    """The API app over ``engine``, guarded by the token in ``settings.token_path`` (created if missing).

    Args:
        settings: the daemon's settings (data dir, token path, and the host names it answers to).
        engine: the SQLite engine from ``mftd.db.make_engine``.
        on_change: called after a job is created, paused, resumed or cancelled, so the
            scheduler looks at the queue at once instead of at its next tick.
        sse_poll_seconds: how often an event stream looks for new events.
    """
    settings.ensure_dirs()
    app = FastAPI(
        title="mftd",
        version=mftd.__version__,
        description="A fine-tuning daemon for phones. Every route but /v1/health needs `Authorization: Bearer <token>`.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.on_change = on_change
    app.state.token = load_or_create_token(settings.token_path)
    app.state.sse_poll_seconds = sse_poll_seconds
    app.state.login_codes = LoginCodes()
    app.add_middleware(LoopbackHostMiddleware, allowed_names=allowed_host_names(settings))
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(dashboard.router)
    _setup_offline_docs(app)
    return app


def _setup_offline_docs(app: FastAPI) -> None:
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="mftd API",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/swagger-favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
