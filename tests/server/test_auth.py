"""Auth: 401 without a valid token, 403 below the role, token creation, the admin token's sources."""

from __future__ import annotations

import os
import stat

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.db import upgrade
from tests.server.conftest import SPEC, Api, make_settings


def test_every_endpoint_but_healthz_needs_a_token(api: Api) -> None:
    assert api.anon.get("/healthz").json()["status"] == "ok"
    assert api.anon.get("/api/v1/healthz").status_code == 200
    for method, path in [("GET", "/api/v1/runs"), ("POST", "/api/v1/runs"), ("GET", "/api/v1/runs/1"),
                         ("POST", "/api/v1/runs/1/start"), ("PATCH", "/api/v1/runs/1/knobs"),
                         ("POST", "/api/v1/runs/1/metrics"), ("GET", "/api/v1/runs/1/events"),
                         ("POST", "/api/v1/runs/1/heartbeats"), ("POST", "/api/v1/tokens")]:
        r = api.anon.request(method, path, json={})
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"].startswith("Authorization")
    for header in ("Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", ""):
        assert api.anon.get("/api/v1/runs", headers={"Authorization": header}).status_code == 401


def test_read_token_reads_but_cannot_write(api: Api) -> None:
    run = api.create_run()
    r = api.client.post("/api/v1/tokens", json={"name": "dashboard", "role": "read"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["role"] == "read" and created["token"].startswith("copd_")
    h = {"Authorization": f"Bearer {created['token']}"}
    assert api.anon.get(f"/api/v1/runs/{run['id']}", headers=h).status_code == 200
    assert api.anon.get(f"/api/v1/runs/{run['id']}/knobs", headers=h).status_code == 200
    for method, path in [("POST", "/api/v1/runs"), ("POST", f"/api/v1/runs/{run['id']}/start"),
                         ("POST", f"/api/v1/runs/{run['id']}/metrics"), ("DELETE", f"/api/v1/runs/{run['id']}"),
                         ("POST", "/api/v1/tokens"), ("GET", "/api/v1/tokens")]:
        r = api.anon.request(method, path, headers=h, json=SPEC)
        assert r.status_code == 403, (method, path, r.text)
        assert "read" in r.json()["detail"]
    assert api.client.get(f"/api/v1/runs/{run['id']}").json()["status"] == "draft"


def test_write_token_writes_and_is_recorded_as_author(api: Api) -> None:
    token = api.client.post("/api/v1/tokens", json={"name": "worker-1", "role": "write"}).json()["token"]
    h = {"Authorization": f"Bearer {token}"}
    run = api.anon.post("/api/v1/runs", json=SPEC, headers=h)
    assert run.status_code == 201
    r = api.anon.patch(f"/api/v1/runs/{run.json()['id']}/knobs", headers=h,
                       json={"expected_version": 0, "changes": {"lr": 0.01}})
    assert r.json()["history"][1]["author"] == "worker-1"
    assert api.anon.post("/api/v1/tokens", headers=h, json={"name": "x", "role": "read"}).status_code == 403


def test_tokens_are_listed_without_secrets_and_can_be_revoked(api: Api) -> None:
    created = api.client.post("/api/v1/tokens", json={"name": "temp", "role": "read"}).json()
    listing = api.client.get("/api/v1/tokens").json()
    assert {t["name"] for t in listing} == {"admin", "temp"} and all("token" not in t and "hash" not in t for t in listing)
    assert api.client.post("/api/v1/tokens", json={"name": "temp", "role": "read"}).status_code == 409
    assert api.client.post("/api/v1/tokens", json={"name": "root", "role": "admin"}).status_code == 422
    assert api.client.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    assert api.anon.get("/api/v1/runs", headers={"Authorization": f"Bearer {created['token']}"}).status_code == 401
    admin_id = next(t["id"] for t in listing if t["name"] == "admin")
    assert api.client.delete(f"/api/v1/tokens/{admin_id}").status_code == 409


@pytest.mark.parametrize("token", ["changeme", "change-me", "secret", "CHANGEME-please-now", "short-token"])
def test_placeholder_admin_token_is_refused(tmp_path, sqlite_url: str, token: str) -> None:
    app = create_app(make_settings(tmp_path, sqlite_url, api_token=token))
    with pytest.raises(RuntimeError, match="COPD_API_TOKEN"):
        with TestClient(app):
            pass


def test_generated_token_file_is_0600_and_reused(backend: str, scratch_url: str, tmp_path) -> None:
    upgrade(scratch_url)
    settings = make_settings(tmp_path, scratch_url, api_token=None)
    with TestClient(create_app(settings)) as c:
        token = settings.token_file.read_text().strip()
        assert stat.S_IMODE(os.stat(settings.token_file).st_mode) == 0o600
        assert len(token) >= 32
        assert c.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with TestClient(create_app(settings)) as c:  # second start: same token
        assert settings.token_file.read_text().strip() == token
        assert c.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # switching to COPD_API_TOKEN replaces the admin token; the file's token stops working
    with TestClient(create_app(make_settings(tmp_path, scratch_url, api_token="x" * 40))) as c:
        assert c.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert c.get("/api/v1/runs", headers={"Authorization": "Bearer " + "x" * 40}).status_code == 200
