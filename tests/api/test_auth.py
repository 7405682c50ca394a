from fastapi.testclient import TestClient

import mftd
from mftd.settings import Settings


def test_health_needs_no_token(client: TestClient):
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": mftd.__version__}


def test_missing_token_is_401_and_says_where_the_token_is(client: TestClient, settings: Settings):
    response = client.get("/v1/models")
    assert response.status_code == 401
    assert str(settings.token_path) in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_token_is_401(client: TestClient, token: str):
    response = client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}x"})
    assert response.status_code == 401
    assert "wrong token" in response.json()["detail"]


def test_non_bearer_scheme_is_401(client: TestClient, token: str):
    response = client.get("/v1/jobs", headers={"Authorization": f"Basic {token}"})
    assert response.status_code == 401


def test_token_file_is_private(client: TestClient, settings: Settings):
    assert settings.token_path.stat().st_mode & 0o777 == 0o600


def test_device_with_token(client: TestClient, auth: dict[str, str]):
    response = client.get("/v1/device", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["can_train"], bool)
    assert {reading["name"] for reading in body["readings"]} >= {"battery_percent", "charging", "free_storage_mb"}


def test_docs_are_served_without_a_cdn(client: TestClient):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/static/swagger-ui-bundle.js" in page.text
    assert "cdn.jsdelivr.net" not in page.text
    assert client.get("/static/swagger-ui-bundle.js").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_every_route_has_a_tag_and_token_except_health(client: TestClient):
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("tags"), f"{method} {path} has no tag"
            secured = bool(operation.get("security"))
            assert secured == (path != "/v1/health"), f"{method} {path} security={operation.get('security')}"
