"""One-time login codes, so the dashboard can log in from a URL that ``mftd open`` prints instead of a pasted token."""

from typing import Annotated, Optional

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import CurrentAuth, LoginCodesDep
from api.schemas import LoginCodePublic, TokenPublic

router = APIRouter(prefix="/auth", tags=["auth"])

login_code_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="LoginCode",
    description="A one-time code from POST /v1/auth/login-codes (what `mftd open` prints after #code=).",
)


@router.post("/login-codes", response_model=LoginCodePublic, status_code=status.HTTP_201_CREATED, dependencies=[CurrentAuth])
def create_login_code(request: Request, login_codes: LoginCodesDep) -> LoginCodePublic:
    """A one-time code that the dashboard trades for the token; valid once, for a few minutes."""
    code = login_codes.issue()
    return LoginCodePublic(code=code, expires_in=int(login_codes.ttl_seconds), url=f"{request.base_url}#code={code}")


@router.post("/exchange", response_model=TokenPublic)
def exchange_login_code(
    request: Request,
    login_codes: LoginCodesDep,
    credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(login_code_scheme)],
) -> TokenPublic:
    """Trade a one-time login code (sent as 'Authorization: Bearer <code>') for the API token."""
    if credentials is None or not credentials.credentials or not login_codes.redeem(credentials.credentials):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="this login code is unknown, already used or expired; run `mftd open` for a new one, or paste the token.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return TokenPublic(token=request.app.state.token)
