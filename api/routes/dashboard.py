"""The dashboard page at ``/``: one HTML file whose script and style ship in ``api/static`` (no CDN, no build step)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["dashboard"])

DASHBOARD_PAGE = Path(__file__).resolve().parent.parent / "static" / "dashboard.html"

# Only this origin's own files may run, be fetched or frame the page; the token lives in this origin's storage.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/", include_in_schema=False, response_class=FileResponse)
def read_dashboard() -> FileResponse:
    """The dashboard; it asks for the token (or trades a login code for it) and then calls /v1 with it."""
    return FileResponse(DASHBOARD_PAGE, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)
