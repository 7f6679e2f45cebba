"""Graceful drain (issue 29, "Rolling restart"): SIGTERM to a daphne process (chatsite.server)
lets its answers in flight end whole, refuses new ones with 503 + Retry-After in each surface's
own error shape, says 503 on /readyz first, and exits by itself; a drain shorter than the
answers ends them ``interrupted``, stored with exactly what their readers received, which a
reader on another process (PostgreSQL + Redis pass) resumes from the shared buffer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.models import Message, Widget
from chat.relay.sse import ServerSentEvent, SSEDecoder
from tests.conftest import server_env, session_client
from tests.integration.test_multiprocess import full_answer
from tests.support.daphne_server import REPO, DaphneServer
from tests.support.llama_server import free_port
from tests.support.sse_client import text_of

pytestmark = pytest.mark.django_db(transaction=True)

SHARED = bool(os.environ.get("REDIS_URL")) and "postgres" in os.environ.get("DATABASE_URL", "")
WIDGET_ORIGIN = "https://docs.example.com"
RATE = 20  # the simulator's words per second
WAIT_S = 30  # the longest any one step may take on a loaded machine


@dataclass
class Reader:
    """One SSE answer read on a thread of its own: its events as they come, ``started`` once a
    chunk with text arrived, ``ended_at`` (time.monotonic()) once the stream closed."""

    response: httpx.Response
    # Leave once the first text arrived (a dropped connection), rather than read to the end.
    leave_when_started: bool = False
    events: list[ServerSentEvent] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    failure: str = ""
    thread: threading.Thread | None = None

    def start(self) -> Reader:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        decoder = SSEDecoder()
        try:
            for piece in self.response.iter_raw():
                self.events += decoder.feed(piece)
                if text_of(self.events):
                    self.started.set()
                    if self.leave_when_started:
                        return
            self.events += decoder.flush()
        except httpx.HTTPError as exc:
            self.failure = repr(exc)
        finally:
            self.ended_at = time.monotonic()
            self.response.close()
            self.started.set()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the answer never ended"

    @property
    def text(self) -> str:
        return text_of(self.events)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [
            json.loads(e.data)["error"]
            for e in self.events
            if e.event == "message" and e.data.startswith('{"error"')
        ]

    def meta(self, name: str) -> dict[str, Any]:
        (event,) = [e for e in self.events if e.event == name]
        found: dict[str, Any] = json.loads(event.data)
        return found

    @property
    def ids(self) -> list[int]:
        return [int(e.id) for e in self.events if e.event == "message" and e.id]


def open_stream(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    response = client.send(client.build_request(method, url, **kwargs), stream=True)
    assert response.status_code == 200, response.read()
    return response


def started_body(sim: Any, count: int) -> dict[str, Any]:
    """The body the simulator got for its ``count``-th stream, once it began."""
    stats = sim.wait_for(lambda s: s["streams_started"] >= count, timeout_s=WAIT_S)
    assert stats["streams_started"] == count
    body: dict[str, Any] = stats["last_request"]
    return body


def v1_stream(client: httpx.Client, api_key: str, content: str) -> Reader:
    return Reader(
        open_stream(
            client,
            "POST",
            "/v1/chat/completions",
            json={
                "model": "primary",
                "messages": [{"role": "user", "content": content}],
                "stream": True,
            },
            headers={"Authorization": f"Bearer {api_key}"},
        )
    ).start()


def wait_draining(base_url: str) -> dict[str, Any]:
    """``/readyz`` once it says 503 (the drain began); its body."""
    deadline = time.monotonic() + WAIT_S
    while True:
        ready = httpx.get(base_url + "/readyz", timeout=WAIT_S)
        if ready.status_code == 503:
            body: dict[str, Any] = ready.json()
            return body
        assert ready.status_code == 200
        assert time.monotonic() < deadline, "/readyz never said 503"
        time.sleep(0.02)


def wait_exit(daphne: DaphneServer) -> tuple[int, float]:
    """The process's exit status once it exited by itself, and when (time.monotonic())."""
    assert daphne.process is not None
    code = daphne.process.wait(WAIT_S)
    return code, time.monotonic()


def refusals(daphne: DaphneServer, user: Any, api_key: str, widget: Widget) -> dict[str, Any]:
    """Every surface's new answer, asked of a draining process: (path, status, Retry-After,
    error) each."""
    bearer = {"Authorization": f"Bearer {api_key}"}
    hello = [{"role": "user", "content": "Hello again"}]
    asks: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"model": "primary", "messages": hello, "stream": True}),
        ("/v1/chat/completions", {"model": "primary", "messages": hello}),
        ("/v1/completions", {"model": "primary", "prompt": "Hello", "stream": True}),
        ("/v1/completions", {"model": "primary", "prompt": "Hello"}),
        ("/v1/responses", {"model": "primary", "input": "Hello", "stream": True}),
        ("/v1/responses", {"model": "primary", "input": "Hello"}),
    ]
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=daphne.base_url, timeout=WAIT_S) as client:
        for path, body in asks:
            response = client.post(path, json=body, headers=bearer)
            seen[f"{path} stream={bool(body.get('stream'))}"] = response
        visitor = client.post(
            f"/widget/{widget.public_key}/visitor/", headers={"Origin": WIDGET_ORIGIN}
        )
        assert visitor.status_code == 200
        seen["widget stream"] = client.post(
            f"/widget/{widget.public_key}/stream/",
            json={"content": "Hello"},
            headers={"Origin": WIDGET_ORIGIN, "X-Widget-Visitor": visitor.json()["token"]},
        )
    with closing(session_client(daphne, user)) as chat:
        seen["chat stream"] = chat.post("/chat/stream/", json={"content": "Hello"})
    return seen


@pytest.fixture
def widget(slot: Any) -> Widget:
    return Widget.objects.create(name="Docs", slot=slot, allowed_origins=WIDGET_ORIGIN)


def test_sigterm_lets_answers_in_flight_end_whole_and_refuses_new_ones(
    slot, sim, user, api_key, widget
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=RATE, length=6 * RATE)  # six seconds an answer
    with (
        DaphneServer(env=server_env()) as daphne,
        httpx.Client(base_url=daphne.base_url, timeout=WAIT_S) as api,
        closing(session_client(daphne, user)) as browser,
    ):
        chat = Reader(open_stream(browser, "POST", "/chat/stream/", json={"content": "Tell"}))
        chat.start()
        bodies = [started_body(sim, 1)]
        streams = []
        for number in range(4):
            streams.append(v1_stream(api, api_key, f"Question {number}"))
            bodies.append(started_body(sim, number + 2))
        readers = [chat, *streams]
        for reader in readers:
            assert reader.started.wait(WAIT_S)
        assert sim.stats()["completed"] == 0  # all five still running

        assert daphne.process is not None
        daphne.process.send_signal(signal.SIGTERM)
        ready = wait_draining(daphne.base_url)
        assert "draining" in ready["checks"], ready
        # A resume of an answer already running is still served.
        meta = chat.meta("slipstream.message")
        after = max(chat.ids)
        resumed = Reader(
            open_stream(browser, "GET", f"/chat/generations/{meta['generation_id']}/?after={after}")
        ).start()
        refused = refusals(daphne, user, api_key, widget)
        assert not Message.objects.filter(content="Hello").exists()  # nothing of them stored
        for reader in [*readers, resumed]:
            reader.join()
        code, exited_at = wait_exit(daphne)

    for name, response in refused.items():
        assert response.status_code == 503, (name, response.text)
        assert response.headers["Retry-After"] == "1", name
        assert response.json()["error"]["code"] == "draining", name
    assert sim.stats()["streams_started"] == 5  # nothing refused reached the upstream
    for reader, body in zip(readers, bodies, strict=True):
        assert not reader.failure
        assert reader.errors == []
        assert reader.events[-1].data == "[DONE]"
        assert reader.text == full_answer(sim, body)
    assert chat.meta("slipstream.done")["status"] == "complete"
    message = Message.objects.get(pk=meta["assistant_message_id"])
    assert message.status == "complete"
    assert message.content == chat.text
    assert resumed.ids[0] == after + 1
    assert chat.text.endswith(resumed.text)
    assert resumed.events[-1].data == "[DONE]"
    last_end = max(r.ended_at or 0 for r in readers)
    assert code == 0
    assert exited_at - last_end < 5.0, exited_at - last_end
    print(f"\nexit {exited_at - last_end:.2f} s after the last answer ended")


def test_answers_past_the_drain_time_are_stored_interrupted(slot, sim, user, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=RATE, length=400)  # twenty seconds an answer
    env = {**server_env(), "SLIPSTREAM_DRAIN_S": "1"}
    with (
        DaphneServer(env=env) as daphne,
        httpx.Client(base_url=daphne.base_url, timeout=WAIT_S) as api,
        closing(session_client(daphne, user)) as browser,
    ):
        chat = Reader(open_stream(browser, "POST", "/chat/stream/", json={"content": "Tell"}))
        chat.start()
        chat_body = started_body(sim, 1)
        v1 = v1_stream(api, api_key, "Question")
        v1_body = started_body(sim, 2)
        for reader in (chat, v1):
            assert reader.started.wait(WAIT_S)
        assert daphne.process is not None
        signalled_at = time.monotonic()
        daphne.process.send_signal(signal.SIGTERM)
        for reader in (chat, v1):
            reader.join()
        code, exited_at = wait_exit(daphne)

    stats = sim.wait_for(lambda s: s["cancelled"] == 2, timeout_s=WAIT_S)  # upstreams closed
    assert stats["completed"] == 0
    for reader, body in ((chat, chat_body), (v1, v1_body)):
        assert not reader.failure  # ended, not cut
        assert [e["code"] for e in reader.errors] == ["interrupted"]
        assert reader.text
        assert full_answer(sim, body).startswith(reader.text)
    assert chat.meta("slipstream.done")["status"] == "error"
    message = Message.objects.get(pk=chat.meta("slipstream.message")["assistant_message_id"])
    assert message.status == "interrupted"
    assert message.content == chat.text  # what its reader received, exactly
    assert (message.error or {})["error"]["code"] == "interrupted"
    assert code == 0
    assert exited_at - signalled_at < 1 + 5.0, exited_at - signalled_at
    print(
        f"\ninterrupted after {exited_at - signalled_at:.2f} s: stored {message.status}, "
        f"{len(message.content.split())} words = what the reader received"
    )


@pytest.fixture
def other(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """A process that drains in one second, next to the session's ``server``."""
    with django_db_blocker.unblock():
        env = {**server_env(), "SLIPSTREAM_DRAIN_S": "1"}
    with DaphneServer(env=env) as daphne:
        yield daphne


@pytest.mark.skipif(not SHARED, reason="needs REDIS_URL and DATABASE_URL=postgres://…")
def test_an_interrupted_answer_is_resumed_on_another_process(server, other, slot, sim, user):
    sim.configure(ttft_ms=0, tokens_per_s=RATE, length=400)
    with closing(session_client(other, user)) as a:
        # The reader's connection drops after the first chunks (a chat answer runs on).
        first = Reader(
            open_stream(a, "POST", "/chat/stream/", json={"content": "Tell"}),
            leave_when_started=True,
        ).start()
        first.join()
        meta = first.meta("slipstream.message")
        generation, seen = meta["generation_id"], max(first.ids)
        with closing(session_client(server, user, session=a.cookies["sessionid"])) as b:
            resumed = Reader(
                open_stream(b, "GET", f"/chat/generations/{generation}/?after={seen}")
            ).start()
            assert resumed.started.wait(WAIT_S)  # following the shared buffer
            assert other.process is not None
            other.process.send_signal(signal.SIGTERM)
            resumed.join()
            code, _ = wait_exit(other)
            # Read again once its process is gone: the same tail and end (the mirror here is
            # kept RESUME_GRACE_S after its end).
            again = Reader(
                open_stream(b, "GET", f"/chat/generations/{generation}/?after={seen}")
            ).start()
            again.join()

    assert code == 0
    assert not resumed.failure
    # Every chunk after the last one seen, none twice; then an explicit end, not a normal one.
    assert resumed.ids == list(range(seen + 1, seen + 1 + len(resumed.ids)))
    assert [e["code"] for e in resumed.errors] == ["interrupted"]
    assert resumed.meta("slipstream.done")["status"] == "error"
    received = first.text + resumed.text
    message = Message.objects.get(pk=meta["assistant_message_id"])
    assert message.status == "interrupted"
    assert message.content == received
    assert again.text == resumed.text
    assert [e["code"] for e in again.errors] == ["interrupted"]
    print(
        f"\nresumed on the other process after chunk {seen}: {len(resumed.ids)} more chunks, "
        f"then 'interrupted'; stored {message.status} with {len(received.split())} words"
    )


# ------------------------------------------------------------------------------------------------
# A rolling restart behind deploy/nginx.conf
# ------------------------------------------------------------------------------------------------
NGINX = shutil.which("nginx")


def nginx_conf(port: int, upstreams: tuple[int, int], directory: Path) -> str:
    """deploy/nginx.conf as it is, on plain HTTP at ``port`` in front of ``upstreams``."""
    site = (REPO / "deploy" / "nginx.conf").read_text()
    site = site.replace("8101", str(upstreams[0])).replace("8102", str(upstreams[1]))
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
    site = site.replace("http2 on;", "")  # TLS only (and nginx 1.25's spelling)
    temp = "\n".join(
        f"    {name}_temp_path {directory / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'};\n"
        f"events {{}}\nhttp {{\n    access_log off;\n{temp}\n{site}\n}}\n"
    )


@pytest.fixture
def nginx_pair(
    django_db_setup: None, django_db_blocker: Any, tmp_path: Path
) -> Iterator[tuple[str, DaphneServer, DaphneServer]]:
    """nginx (deploy/nginx.conf) in front of two daphne processes: its base URL, and both."""
    assert NGINX is not None
    with django_db_blocker.unblock():
        env = server_env()
    tmp_path.chmod(0o777)  # its workers may run as another user
    port = free_port()
    with DaphneServer(env=env) as first, DaphneServer(env=env) as second:
        conf = tmp_path / "nginx.conf"
        conf.write_text(nginx_conf(port, (first.port, second.port), tmp_path))
        proxy = subprocess.Popen([NGINX, "-c", str(conf)], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + WAIT_S
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                assert proxy.poll() is None, proxy.stderr.read() if proxy.stderr else ""
                assert time.monotonic() < deadline, "nginx never answered"
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}", first, second
        finally:
            proxy.terminate()
            proxy.wait(WAIT_S)
            if proxy.stderr is not None:
                proxy.stderr.close()


def browser(base_url: str, session: str) -> httpx.Client:
    """A signed-in browser (``session``) talking to ``base_url``, with Django's CSRF token."""
    client = httpx.Client(base_url=base_url, timeout=WAIT_S)
    client.cookies.set("sessionid", session)
    client.get("/").raise_for_status()
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


@pytest.mark.skipif(not (SHARED and NGINX), reason="needs nginx, REDIS_URL and PostgreSQL")
def test_a_rolling_restart_behind_nginx_cuts_no_answer(nginx_pair, slot, sim, user, api_key):
    proxy, first, _ = nginx_pair
    answers = 30
    sim.configure(ttft_ms=0, tokens_per_s=RATE, length=8 * RATE)  # eight seconds an answer
    with closing(session_client(first, user)) as signed_in:
        session = signed_in.cookies["sessionid"]
    with (
        httpx.Client(base_url=proxy, timeout=WAIT_S) as api,
        closing(browser(proxy, session)) as chat_client,
    ):
        readers, bodies = [], []
        for number in range(answers):
            if number % 5 == 0:
                reader = Reader(
                    open_stream(
                        chat_client, "POST", "/chat/stream/", json={"content": f"C{number}"}
                    )
                ).start()
            else:
                reader = v1_stream(api, api_key, f"Question {number}")
            readers.append(reader)
            bodies.append(started_body(sim, number + 1))
        for reader in readers:
            assert reader.started.wait(WAIT_S)
        assert first.process is not None
        first.process.send_signal(signal.SIGTERM)
        wait_draining(first.base_url)
        # New answers while the first process drains: nginx passes its refusals to the second.
        during = []
        for number in range(6):
            during.append(v1_stream(api, api_key, f"During {number}"))
            bodies.append(started_body(sim, answers + number + 1))
        during.append(
            Reader(open_stream(chat_client, "POST", "/chat/stream/", json={"content": "D"})).start()
        )
        bodies.append(started_body(sim, answers + 7))
        everyone = [*readers, *during]
        for reader in everyone:
            reader.join()
        code, _ = wait_exit(first)
        log = first.log_text()
        refused = log.count("Service Unavailable: /v1/") + log.count("Service Unavailable: /chat/")
        # The first process back, in its own place, while the second serves.
        with DaphneServer(env=server_env(), port=first.port) as again:
            after = v1_stream(api, api_key, "After")
            after_body = started_body(sim, answers + 8)
            after.join()
            assert httpx.get(again.base_url + "/readyz").status_code == 200

    assert code == 0
    for reader, body in zip(everyone, bodies, strict=True):
        assert not reader.failure
        assert reader.errors == []
        assert reader.events[-1].data == "[DONE]"
        assert reader.text == full_answer(sim, body)
    chats = [r for r in everyone if any(e.event == "slipstream.message" for e in r.events)]
    assert len(chats) == answers // 5 + 1
    for reader in chats:
        message = Message.objects.get(pk=reader.meta("slipstream.message")["assistant_message_id"])
        assert (message.status, message.content) == ("complete", reader.text)
    assert after.text == full_answer(sim, after_body)
    print(
        f"\nrolling restart: {answers} answers in flight and {len(during)} started during the "
        f"drain all whole and stored; {refused} refusals by the draining process retried by nginx"
    )
