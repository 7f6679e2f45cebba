"""Security headers over real HTTP: the Content-Security-Policy on every page (the widget's with
its own frame-ancestors), CSP reports, and the cookies, HSTS and HTTPS redirect behind a TLS
proxy.

Settings are read from the environment once, at import, so the proxy's settings are checked on
a second daphne process started with ``DJANGO_BEHIND_PROXY=true`` (what a deployment runs), and
their defaults and overrides by importing ``chatsite.settings`` in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
from django.contrib.auth import get_user_model

from chat.models import Conversation, Widget
from tests.conftest import HTTPS, server_env, session_client
from tests.support.daphne_server import REPO, DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

HOST = "https://docs.example.com"
# The whole policy, directive by directive: a page that sent more (an 'unsafe-inline', another
# origin) fails as surely as one that sent less.
POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    "report-uri": ["/csp-report/"],
}


def directives(response: httpx.Response) -> dict[str, list[str]]:
    """The response's Content-Security-Policy as {directive: sources}; exactly one header."""
    headers = response.headers.get_list("content-security-policy")
    assert len(headers) == 1, headers
    parsed: dict[str, list[str]] = {}
    for part in headers[0].split(";"):
        name, *sources = part.split()
        assert name not in parsed, f"{name} twice in {headers[0]}"
        parsed[name] = sources
    return parsed


@pytest.fixture
def staff(transactional_db: None) -> Any:
    return get_user_model().objects.create_superuser(username="root", password="correct horse 42")


def test_every_app_page_sends_the_policy(server, slot, user, staff, browser_session) -> None:
    conversation = Conversation.objects.create(user=user, slot=slot, title="Plans")
    shared = Conversation.objects.create(user=staff, slot=slot, title="Ours", share_id=uuid4())
    pages = ["/", f"/c/{conversation.pk}/", "/settings/keys/", f"/s/{shared.share_id}/"]
    for page in pages:
        response = browser_session.get(page)
        assert response.status_code == 200, page
        assert directives(response) == POLICY, page
    with httpx.Client(base_url=server.base_url) as anonymous:
        for page in ["/login/", "/admin/login/"]:
            response = anonymous.get(page)
            assert response.status_code == 200, page
            assert directives(response) == POLICY, page
    admin = session_client(server, staff)
    try:
        admin_pages = [
            "/admin/",
            "/admin/chat/widget/add/",
            f"/admin/chat/conversation/{conversation.pk}/change/",
        ]
        for page in admin_pages:
            response = admin.get(page)
            assert response.status_code == 200, page
            assert directives(response) == POLICY, page
    finally:
        admin.close()


def test_a_refused_csrf_check_gets_a_page_the_policy_lets_render(server) -> None:
    # Django's own page styles itself with an inline <style>, which the policy blocks.
    with httpx.Client(base_url=server.base_url) as browser:
        form = browser.post("/login/", data={"username": "ada", "password": "x"})
        fetched = browser.post("/chat/stream/", json={"content": "hi"})  # chat.stream's fetch
    assert form.status_code == 403
    assert form.headers["content-type"].startswith("text/html")
    assert directives(form) == POLICY
    page = form.text
    assert re.search(r'<link rel="stylesheet" href="/static/chat/chat(\.[0-9a-f]+)?\.css">', page)
    assert "<style" not in page
    assert " style=" not in page
    assert "<script>" not in page  # scripts only from files, as everywhere
    assert "CSRF" in page
    # A JSON endpoint's refusal is JSON, as its other errors are (chat.middleware.wants_json).
    assert fetched.status_code == 403
    assert fetched.json()["error"]["code"] == "csrf_failed"


def test_the_widget_page_is_framed_only_by_its_origins(server, slot) -> None:
    widget = Widget.objects.create(
        name="Docs", slot=slot, allowed_origins=f"{HOST}/\nhttp://localhost:8080"
    )
    page = f"{server.base_url}/widget/{widget.public_key}/"
    response = httpx.get(page)
    assert response.status_code == 200
    assert directives(response) == {
        **POLICY,
        "frame-ancestors": [HOST, "http://localhost:8080"],
    }
    assert "x-frame-options" not in response.headers
    # None listed: nobody may frame it; the rest of the policy is the same.
    Widget.objects.filter(pk=widget.pk).update(allowed_origins="")
    assert directives(httpx.get(page)) == POLICY
    # A malformed origin (saved past the form's validation) cannot add a directive.
    Widget.objects.filter(pk=widget.pk).update(allowed_origins=f"{HOST};script-src\t*")
    assert directives(httpx.get(page)) == POLICY


def report_uri_body(**fields: Any) -> bytes:
    return json.dumps({"csp-report": fields}).encode()


def test_a_report_is_logged_once_and_answered_204(server) -> None:
    url = f"{server.base_url}/csp-report/"
    response = httpx.post(
        url,
        content=report_uri_body(
            **{
                "document-uri": f"{server.base_url}/c/1/",
                "violated-directive": "script-src-elem",
                "effective-directive": "script-src-elem",
                "blocked-uri": "https://evil.example/x.js",
                "original-policy": "default-src 'self'",
            }
        ),
        headers={"Content-Type": "application/csp-report"},
    )
    assert response.status_code == 204
    assert response.content == b""
    # The Reporting API's batch format too.
    batch = [
        {
            "type": "csp-violation",
            "url": f"{server.base_url}/",
            "body": {
                "documentURL": f"{server.base_url}/",
                "effectiveDirective": "style-src-attr",
                "blockedURL": "inline",
                "sourceFile": f"{server.base_url}/static/chat/x.js",
                "lineNumber": 12,
            },
        }
    ]
    response = httpx.post(
        url, content=json.dumps(batch), headers={"Content-Type": "application/reports+json"}
    )
    assert response.status_code == 204
    log = server.log_text()
    # One line each, at WARNING, from the module's logger.
    script = (
        " WARNING chat.csp CSP violation: script-src-elem blocked https://evil.example/x.js "
        f"on {server.base_url}/c/1/ (source -)"
    )
    style = (
        f" WARNING chat.csp CSP violation: style-src-attr blocked inline on {server.base_url}/ "
        f"(source {server.base_url}/static/chat/x.js:12)"
    )
    lines = log.splitlines()
    assert sum(line.endswith(script) for line in lines) == 1, log
    assert sum(line.endswith(style) for line in lines) == 1, log


def test_a_report_cannot_forge_log_lines_or_be_large(server) -> None:
    url = f"{server.base_url}/csp-report/"
    forged = report_uri_body(
        **{"effective-directive": "img-src", "blocked-uri": "x\n2026-01-01 ERROR forged line"}
    )
    assert httpx.post(url, content=forged).status_code == 204
    assert "\n2026-01-01 ERROR forged line" not in server.log_text()
    assert "blocked x\\n2026-01-01 ERROR forged line" in server.log_text()
    huge = report_uri_body(**{"blocked-uri": "x" * 20_000})
    assert httpx.post(url, content=huge).status_code == 413
    assert httpx.post(url, content=b"not json").status_code == 400
    assert httpx.get(url).status_code == 405


@pytest.fixture
def limited(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """Behind the proxy (``X-Forwarded-For`` names the client; plain HTTP let through), with
    three reports an hour per address: per hour, because django-ratelimit's windows are fixed
    and a run that crossed one's edge would see a fresh allowance."""
    with django_db_blocker.unblock():
        env = server_env()
    env |= {
        "DJANGO_BEHIND_PROXY": "true",
        "DJANGO_SSL_REDIRECT": "false",
        "SLIPSTREAM_CSP_REPORT_RATE": "3/h",
    }
    with DaphneServer(env=env) as daphne:
        yield daphne


def test_reports_past_the_rate_from_one_address_are_dropped(limited) -> None:
    url = f"{limited.base_url}/csp-report/"
    # This run's own addresses: the counters live in the cache every test server shares.
    here, there = (f"2001:db8::{uuid4().hex[:4]}:{uuid4().hex[:4]}" for _ in range(2))
    marker = uuid4().hex

    def send(n: int, forwarded_for: str) -> int:
        body = report_uri_body(**{"effective-directive": "img-src", "blocked-uri": f"{marker}/{n}"})
        headers = {"X-Forwarded-For": forwarded_for, "Content-Type": "application/csp-report"}
        return httpx.post(url, content=body, headers=headers).status_code

    assert [send(n, here) for n in range(3)] == [204, 204, 204]
    assert send(3, here) == 429
    # A hop of the client's own before the proxy's is no way out: the proxy's says who it is.
    assert send(4, f"192.0.2.1, {here}") == 429
    assert send(5, there) == 204  # per address
    logged = sorted(
        line.rsplit(f"blocked {marker}/", 1)[1][0]
        for line in limited.log_text().splitlines()
        if f"blocked {marker}/" in line
    )
    assert logged == ["0", "1", "2", "5"]


def test_without_a_proxy_nothing_changes(server) -> None:
    """`make run`: plain HTTP on loopback, no redirect, cookies without Secure, no HSTS, and an
    X-Forwarded-Proto from anyone is not trusted."""
    response = httpx.get(f"{server.base_url}/login/", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert "strict-transport-security" not in response.headers
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("csrftoken=")
    assert "secure" not in cookie.lower()


# ------------------------------------------------------------------------------------------------
# Behind a TLS proxy
# ------------------------------------------------------------------------------------------------
def cookies_set(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (httpx's jar would not send Secure cookies over the
    plain HTTP between the test and daphne, so cookies are handled by hand here)."""
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


def test_behind_the_proxy_cookies_are_secure_and_hsts_is_sent(proxied, user) -> None:
    base = proxied.base_url
    with httpx.Client(base_url=base, headers=HTTPS) as client:
        form = client.get("/login/")
        assert form.status_code == 200
        assert form.headers["strict-transport-security"] == "max-age=31536000"
        csrf = cookies_set(form)["csrftoken"]
        assert "; secure" in csrf.lower()
        assert "samesite=lax" in csrf.lower()
        token = csrf.split(";", 1)[0].split("=", 1)[1]
        client.cookies.clear()
        signed_in = client.post(
            "/login/",
            data={"username": "ada", "password": "correct horse 42", "csrfmiddlewaretoken": token},
            # Django checks the Referer of an HTTPS POST against the host.
            headers={
                "Cookie": f"csrftoken={token}",
                "Referer": f"https://127.0.0.1:{proxied.port}/login/",
            },
        )
        assert signed_in.status_code == 302, signed_in.text[:500]
        session = cookies_set(signed_in)["sessionid"]
        assert "; secure" in session.lower()
        assert "samesite=lax" in session.lower()
        assert "httponly" in session.lower()


def test_behind_the_proxy_plain_http_is_redirected(proxied) -> None:
    response = httpx.get(f"{proxied.base_url}/c/x/?q=1")
    assert response.status_code == 301
    assert response.headers["location"] == f"https://127.0.0.1:{proxied.port}/c/x/?q=1"
    assert "strict-transport-security" not in response.headers  # sent over HTTPS only


def settings_with(env: dict[str, str]) -> dict[str, Any]:
    """The security settings ``chatsite.settings`` reads from ``env``, in a fresh interpreter."""
    names = [
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
        "SESSION_COOKIE_SAMESITE",
    ]
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names!r}}}))"
    )
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_BEHIND", "DJANGO_HSTS", "DJANGO_SSL"))
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**base, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    settings: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return settings


def test_the_settings_follow_the_environment() -> None:
    assert settings_with({}) == {
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_PROXY_SSL_HEADER": None,
        "SESSION_COOKIE_SAMESITE": "Lax",
    }
    assert settings_with({"DJANGO_BEHIND_PROXY": "true"}) == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SESSION_COOKIE_SAMESITE": "Lax",
    }
    overridden = settings_with(
        {
            "DJANGO_BEHIND_PROXY": "true",
            "DJANGO_HSTS_SECONDS": "600",
            "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "true",
            "DJANGO_SSL_REDIRECT": "false",
        }
    )
    assert overridden["SECURE_HSTS_SECONDS"] == 600
    assert overridden["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert overridden["SECURE_SSL_REDIRECT"] is False
