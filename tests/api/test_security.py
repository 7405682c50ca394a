"""Safe on a shared localhost: Host checks against DNS rebinding, no CORS, one-time login codes, a locked-down dashboard page."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from api.hosts import host_name
from api.login_codes import LoginCodes
from api.main import create_app
from mftd.settings import Settings


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "127.0.0.1", "localhost", "[::1]", "LOCALHOST:1", "127.0.0.2:9000"])
def test_loopback_hosts_are_answered(client: TestClient, host: str):
    assert client.get("/v1/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/health", "/", "/v1/jobs", "/docs", "/static/dashboard.js", "/openapi.json", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.nip.io:8765", "localhost.evil.example", "", "a:b:c", "[::1"])
def test_foreign_host_is_refused_with_a_clear_message(client: TestClient, auth: dict[str, str], path: str, host: str):
    response = client.get(path, headers={**auth, "Host": host})
    assert response.status_code == 421
    detail = response.json()["detail"]
    assert "Host header" in detail and "DNS rebinding" in detail and "MFTD_ALLOWED_HOSTS" in detail


def test_foreign_host_is_refused_before_anything_is_done(client: TestClient, auth: dict[str, str], model_folder: Path):
    response = client.post("/v1/models", json={"name": "m", "path": str(model_folder)}, headers={**auth, "Host": "evil.example"})
    assert response.status_code == 421
    assert client.get("/v1/models", headers=auth).json()["count"] == 0


def test_configured_and_remote_hosts_are_answered(tmp_path: Path, engine: Engine):
    settings = Settings(data_dir=tmp_path / "data", host="192.168.1.5", allow_remote=True, allowed_hosts=["Phone.LAN"])
    with TestClient(create_app(settings, engine), base_url="http://127.0.0.1") as client:
        for host in ("phone.lan:8765", "192.168.1.5:8765", "127.0.0.1:8765"):
            assert client.get("/v1/health", headers={"Host": host}).status_code == 200, host
        assert client.get("/v1/health", headers={"Host": "192.168.1.6:8765"}).status_code == 421


def test_listen_address_without_allow_remote_is_not_trusted(tmp_path: Path, engine: Engine):
    settings = Settings(data_dir=tmp_path / "data", host="192.168.1.5")
    with TestClient(create_app(settings, engine), base_url="http://127.0.0.1") as client:
        assert client.get("/v1/health", headers={"Host": "192.168.1.5:8765"}).status_code == 421


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8765", "127.0.0.1"), ("[::1]:80", "::1"), ("[::1]", "::1"), ("Localhost", "localhost"), ("a:b", None), ("[::1]x", None), ("", None), (":80", None)],
)
def test_host_name(header: str, name):
    assert host_name(header) == name


def test_no_cors_is_granted(client: TestClient, auth: dict[str, str]):
    origin = {"Origin": "http://evil.example"}
    preflight = client.options(
        "/v1/jobs", headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    )
    assert preflight.status_code == 405
    assert not any(name.lower().startswith("access-control-") for name in preflight.headers)
    response = client.get("/v1/jobs", headers={**auth, **origin})
    assert response.status_code == 200
    assert not any(name.lower().startswith("access-control-") for name in response.headers)


def test_dashboard_is_served_with_its_own_files_only(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/static/dashboard.js" in page.text and "/static/dashboard.css" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for name in ("dashboard.js", "dashboard.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200
        assert "https://" not in asset.text and "http://" not in asset.text.replace("http://www.w3.org/2000/svg", "")


def test_dashboard_needs_no_token_but_its_data_does(client: TestClient):
    assert client.get("/").status_code == 200
    assert client.get("/v1/live/jobs").status_code == 401


def test_login_code_is_traded_once_for_the_token(client: TestClient, auth: dict[str, str], token: str):
    created = client.post("/v1/auth/login-codes", headers=auth)
    assert created.status_code == 201
    body = created.json()
    assert body["url"] == f"http://127.0.0.1/#code={body['code']}"
    assert body["expires_in"] > 0

    exchange = client.post("/v1/auth/exchange", headers={"Authorization": f"Bearer {body['code']}"})
    assert exchange.status_code == 200
    assert exchange.json() == {"token": token}

    again = client.post("/v1/auth/exchange", headers={"Authorization": f"Bearer {body['code']}"})
    assert again.status_code == 401
    assert "already used or expired" in again.json()["detail"]


def test_login_codes_need_the_token(client: TestClient, token: str):
    assert client.post("/v1/auth/login-codes").status_code == 401
    assert client.post("/v1/auth/login-codes", headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer made-up"}, {"Authorization": "Basic abc"}])
def test_exchange_without_a_valid_code_is_401(client: TestClient, headers: dict[str, str]):
    response = client.post("/v1/auth/exchange", headers=headers)
    assert response.status_code == 401
    assert "mftd open" in response.json()["detail"]


def test_the_token_is_not_a_login_code(client: TestClient, token: str):
    assert client.post("/v1/auth/exchange", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_login_codes_expire():
    now = [100.0]
    codes = LoginCodes(ttl_seconds=60, clock=lambda: now[0])
    first, second = codes.issue(), codes.issue()
    now[0] += 59
    assert codes.redeem(first)
    now[0] += 2
    assert not codes.redeem(second)
