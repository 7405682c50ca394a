"""Dependencies shared by the routes, as ``Annotated`` aliases: the session, the settings, the token check, the scheduler nudge."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Annotated, Optional

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.login_codes import LoginCodes
from mftd.db import new_session
from mftd.registry import MAX_ID
from mftd.settings import Settings

logger = logging.getLogger(__name__)

bearer_scheme = HTTPBearer(auto_error=False, description="The token in <data dir>/token.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> Iterator[Session]:
    with new_session(engine) as session:
        yield session


def require_token(
    request: Request,
    credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer_scheme)],
) -> None:
    """Accept the request only with ``Authorization: Bearer <the token>``."""
    token_path = request.app.state.settings.token_path
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=f"missing token: send 'Authorization: Bearer <token>' with the token in {token_path}.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected: str = request.app.state.token
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=f"wrong token: use the one in {token_path}.",
            headers={"WWW-Authenticate": "Bearer"},
        )


def get_login_codes(request: Request) -> LoginCodes:
    return request.app.state.login_codes


def get_notify_change(request: Request) -> Callable[[], None]:
    """A function that tells the scheduler to look at the queue again now; never raises."""
    on_change: Optional[Callable[[], None]] = request.app.state.on_change

    def notify_change() -> None:
        if on_change is None:
            return
        try:
            on_change()
        except Exception:  # the request already succeeded; the next regular tick catches up
            logger.exception("on_change callback failed")

    return notify_change


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
EngineDep = Annotated[Engine, Depends(get_engine)]
CurrentAuth = Depends(require_token)
TokenDep = Annotated[None, CurrentAuth]
LoginCodesDep = Annotated[LoginCodes, Depends(get_login_codes)]
NotifyChangeDep = Annotated[Callable[[], None], Depends(get_notify_change)]
SkipQuery = Annotated[int, Query(ge=0, le=MAX_ID, description="How many items to skip.")]
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="At most this many items.")]
