"""The review page's server: sign-in, sessions, CSRF, throttling, worklist order and filters, verdicts and conflicts,
audit log, the accounts CLI, and a PHI scan of the database and of every page served."""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_support import PASSWORD, Site, make_site

from client.review.app import ReviewSettings, create_app
from common.cli import main


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    return make_site(tmp_path_factory.mktemp("review"))


def _client(site: Site) -> TestClient:
    return TestClient(create_app(site.store, site.accounts, ReviewSettings()), follow_redirects=False)


def _signed_in(site: Site, user: str = "ada") -> tuple[TestClient, str]:
    client = _client(site)
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"username": user, "password": PASSWORD, "csrf": csrf})
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = client.get("/")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client, token


def test_nothing_without_a_session(site):
    client = _client(site)
    for path in ("/", f"/case/{site.image_ids[0]}", f"/image/{site.image_ids[0]}.png", "/admin"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    r = client.post(f"/api/case/{site.image_ids[0]}/verdict", json={"kind": "no_fracture"})
    assert r.status_code == 401
    form = client.get("/login")
    assert client.post("/login", data={"username": "ada", "password": PASSWORD, "csrf": "forged"}).status_code == 403
    assert "Sign in" in form.text


def test_worklist_is_ordered_by_suspicion_and_states_the_model(site):
    client, _ = _signed_in(site)
    page = client.get("/").text
    probs = re.findall(r'class="prob"><a href="/case/\d+">([0-9.]+)<', page)
    assert probs == ["0.92", "0.71", "0.30"]
    assert "demo/v0007" in page
    assert client.get("/?model_version=other").text.count('class="prob"') == 0
    case = client.get(f"/case/{site.image_ids[1]}").text
    assert 'id="model-version">demo/v0007<' in case


def test_verdicts_need_csrf_are_audited_and_conflicts_answer_409(site, tmp_path):
    local = make_site(tmp_path)
    client, csrf = _signed_in(local)
    image_id = local.image_ids[0]
    state = client.get(f"/api/case/{image_id}").json()
    box = state["boxes"][0]
    body = {"kind": "confirm", "box_id": box["id"], "expected_version": box["version"]}
    assert client.post(f"/api/case/{image_id}/verdict", json=body).status_code == 403
    assert (
        client.post(f"/api/case/{image_id}/verdict", json=body, headers={"X-CSRF-Token": "x" * 43}).status_code == 403
    )
    r = client.post(f"/api/case/{image_id}/verdict", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["boxes"][0]["status"] == "confirmed"
    assert r.json()["next"] == local.image_ids[1]
    # a second reviewer still looking at version 1 of the same box
    other, other_csrf = _signed_in(local, "root")
    stale = {"kind": "move", "box_id": box["id"], "box": [1, 2, 30, 40], "expected_version": box["version"]}
    r = other.post(f"/api/case/{image_id}/verdict", json=stale, headers={"X-CSRF-Token": other_csrf})
    assert r.status_code == 409 and "someone else changed it" in r.json()["detail"]
    assert r.json()["case"]["boxes"][0]["version"] == 2
    bad = other.post(
        f"/api/case/{image_id}/verdict",
        json={"kind": "move", "box_id": box["id"], "box": [5, 5, 1, 1]},
        headers={"X-CSRF-Token": other_csrf},
    )
    assert bad.status_code == 400 and "x1 < x2" in bad.json()["detail"]
    (v,) = local.store.verdicts()
    ada = local.accounts.user("ada")
    assert (v.kind, v.reviewer, v.source) == ("confirm", ada.reviewer_id, "review")
    actions = [(a["actor"], a["action"]) for a in local.store.audit_log()]
    assert (ada.reviewer_id, "login") in actions and (ada.reviewer_id, "verdict:confirm") in actions
    assert client.get("/admin").status_code == 403
    admin_page = other.get("/admin")
    assert admin_page.status_code == 200 and "verdict:confirm" in admin_page.text


def test_sessions_expire_and_disabling_ends_them(site, tmp_path):
    local = make_site(tmp_path)
    client, _ = _signed_in(local)
    assert client.get("/").status_code == 200
    with sqlite3.connect(local.store.path) as con:
        con.execute("UPDATE sessions SET expires_at = '2000-01-01T00:00:00+00:00'")
    assert client.get("/").status_code == 303
    client, _ = _signed_in(local)
    local.accounts.set_disabled("ada")
    assert client.get("/").status_code == 303
    assert local.accounts.login("ada", PASSWORD) is None


def test_login_is_throttled(site, tmp_path):
    local = make_site(tmp_path)
    client = _client(local)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    for _ in range(5):
        r = client.post("/login", data={"username": "ada", "password": "wrong guess", "csrf": csrf})
        assert r.status_code == 401 and "wrong user name or password" in r.text
    r = client.post("/login", data={"username": "ada", "password": PASSWORD, "csrf": csrf})
    assert r.status_code == 429 and "too many failed sign-ins" in r.text
    assert "login_throttled" in [a["action"] for a in local.store.audit_log()]
    # another account is not locked by ada's failures
    assert client.post("/login", data={"username": "root", "password": PASSWORD, "csrf": csrf}).status_code == 303


def test_phi_appears_nowhere_in_the_store_or_the_pages(site):
    client, csrf = _signed_in(site, "root")
    image_id = site.image_ids[0]
    box = client.get(f"/api/case/{image_id}").json()["boxes"][1]
    client.post(
        f"/api/case/{image_id}/verdict", json={"kind": "reject", "box_id": box["id"]}, headers={"X-CSRF-Token": csrf}
    )
    paths = ["/login", "/", "/?unreviewed=1", "/?disagreements=1", "/?body_part=HAND", "/admin"]
    for i in site.image_ids:
        paths += [f"/case/{i}", f"/api/case/{i}", f"/image/{i}.png", f"/heatmap/{i}.png"]
    served = b""
    for path in paths:
        r = client.get(path)
        assert r.status_code in (200, 404), path
        served += r.content + str(r.headers).encode()
    assert b"demo/v0007" in served  # the scan reads real pages
    db = b"".join(p.read_bytes() for p in Path(site.store.path).parent.glob("feedback.db*"))
    assert b"record_image" in db
    for value in site.phi:
        for blob, where in ((db, "database"), (served, "pages")):
            assert value.encode() not in blob and value.upper().encode() not in blob, f"{value!r} in the {where}"


def test_accounts_cli(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "fb.db")
    assert main(["review", "serve", "--db", db]) == 2
    assert "no accounts yet" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough secret\n"))
    assert main(["review", "users", "add", "grace", "--role", "admin", "--password-stdin", "--db", db]) == 0
    assert re.search(r"added grace \(admin\); their verdicts are signed rev-[0-9a-f]{8}", capsys.readouterr().out)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["review", "users", "add", "alan", "--password-stdin", "--db", db]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    assert main(["review", "users", "disable", "grace", "--db", db]) == 0
    assert main(["review", "users", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "grace\tadmin\trev-" in out and "disabled" in out
    with sqlite3.connect(db) as con:
        (digest,) = con.execute("SELECT password_hash FROM users").fetchone()
    assert digest.startswith("$argon2id$") and "secret" not in digest
