"""Who may do what: tokens, roles, browser sessions with CSRF, anonymous reading, login rate limit."""

from __future__ import annotations

import re

import httpx
import pytest

from testlab.db.session import session_scope
from testlab.services.users import revoke_tokens
from tests.web.conftest import PASSWORD, job_upload, write_job

pytestmark = pytest.mark.slow


def test_roles_and_tokens(serve, web_lab, tmp_path):
    lab_db, _ = web_lab
    server = serve(engine=False)
    with server.client("alice") as alice:
        job_id = alice.post("/api/v1/jobs", files=job_upload(write_job(tmp_path / "job"))).json()["id"]
    with server.client() as nobody:
        assert nobody.get("/api/v1/jobs").status_code == 401
        assert nobody.post("/api/v1/jobs", files=job_upload(write_job(tmp_path / "j2"))).status_code == 401
        answer = nobody.post(f"/api/v1/jobs/{job_id}/cancel")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert nobody.get("/api/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    with server.client("expired") as expired:
        answer = expired.get("/api/v1/jobs")
        assert answer.status_code == 401
        assert answer.json() == {"detail": "the API token is invalid, expired or revoked"}
    with server.client("bob") as bob:
        assert bob.get(f"/api/v1/jobs/{job_id}").status_code == 200  # anyone logged in reads
        for action in ("cancel", "restart"):
            refused = bob.post(f"/api/v1/jobs/{job_id}/{action}")
            assert refused.status_code == 403 and "belongs to alice" in refused.json()["detail"]
        assert bob.post("/api/v1/vms/a1/change", json={"change": "maintenance"}).status_code == 403
        assert bob.post("/api/v1/hosts/h1/change", json={"status": "down"}).status_code == 403
        assert bob.post("/api/v1/hosts/h1/power-cycle").status_code == 403
        assert bob.get("/api/v1/vms/a1").json()["status"] != "maintenance"
    with server.client("admin") as admin:
        assert admin.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200  # an admin may
    with session_scope(lab_db.settings.database_url) as session:
        revoke_tokens(session, "bob")
    with server.client("bob") as bob:
        assert bob.get("/api/v1/jobs").status_code == 401
    with server.client("alice") as alice:
        assert alice.get("/api/v1/whoami").json() == {"name": "alice", "role": "user", "via": "token"}
    log = server.log.read_text()
    assert all(token not in log for token in server.tokens.values())


def test_anonymous_reading_only_when_allowed(serve, tmp_path):
    server = serve(engine=False, extra_env={"TESTLAB_WEB_ANONYMOUS": "1"})
    with server.client() as nobody:
        assert nobody.get("/api/v1/jobs").status_code == 200
        assert nobody.get("/api/v1/vms").status_code == 200
        assert nobody.get("/jobs").status_code == 200
        assert nobody.post("/api/v1/jobs", files=job_upload(write_job(tmp_path / "job"))).status_code == 401
        assert nobody.post("/api/v1/vms/a1/change", json={"change": "offline"}).status_code == 401


def _csrf(page: str) -> str:
    match = re.search(r'data-csrf="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def _login(http: httpx.Client, name: str, password: str, next_page: str = "/jobs") -> httpx.Response:
    form = http.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    return http.post(
        "/login", data={"name": name, "password": password, "csrf_token": token, "next": next_page}
    )


def test_browser_sessions_csrf_headers_and_login_limit(serve, tmp_path):
    server = serve(engine=False)
    with server.client("alice") as alice:
        job_id = alice.post("/api/v1/jobs", files=job_upload(write_job(tmp_path / "job"))).json()["id"]
    with server.client() as browser:
        page = browser.get("/jobs")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fjobs"
        login = browser.get("/login")
        for header, value in (
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("cache-control", "no-store"),
        ):
            assert login.headers[header] == value
        assert "script-src 'self'" in login.headers["content-security-policy"]

        assert _login(browser, "alice", "wrong password").status_code == 401
        answer = _login(browser, "alice", PASSWORD, next_page="//elsewhere.example/")
        assert answer.status_code == 303 and answer.headers["location"] == "/jobs"  # never off-site
        cookie = answer.headers["set-cookie"]
        assert "testlab_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        page = browser.get("/jobs")
        assert page.status_code == 200 and f'href="/jobs/{job_id}"' in page.text
        csrf = _csrf(page.text)

        # a write with the session needs the CSRF token, from this site
        assert browser.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 403
        foreign = browser.post(
            f"/api/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        form = browser.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "forged"})
        assert form.status_code == 403
        assert browser.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf}).status_code == 303
        assert browser.get(f"/api/v1/jobs/{job_id}").json()["status"] == "canceled"
        assert browser.post("/logout", data={"csrf_token": csrf}).status_code == 303
        assert browser.get("/api/v1/jobs").status_code == 401  # the session is gone

    with server.client() as attacker:
        codes = [_login(attacker, "bob", f"guess {i}").status_code for i in range(6)]
        assert codes == [401] * 5 + [429]
        limited = _login(attacker, "bob", PASSWORD)  # even the right password, until the window passes
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert PASSWORD not in server.log.read_text()
