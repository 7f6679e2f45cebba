"""A PDF's text is read in a process of its own, under CPU and memory limits (issue 33, finding 4),
and uploads are counted per user: over real HTTP, against a real daphne process, whose own CPU
time and child processes the tests read from /proc (proc(5))."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from chat.attachments import _pdf_kept, attachment_create
from chat.extraction import PdfText
from chat.http import Refusal
from chat.models import Attachment, Widget
from tests.conftest import make_slot, server_env, session_client
from tests.support.daphne_server import DaphneServer
from tests.support.files import pdf_endless, pdf_inflating_to, pdf_with_text, png
from tests.support.polling import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# Generous: the tests run beside others on two loaded cores.
WAIT_S = 120


def upload(client: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return client.post(
        "/chat/attachments/",
        files={"file": (name, data, "application/pdf")},
        timeout=WAIT_S,
    )


def _stat(pid: int) -> list[str]:
    """proc(5)'s ``/proc/<pid>/stat`` fields after the command name: [0] is field 3 (state)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """CPU seconds ``pid`` has used itself, user and system (fields 14 and 15), not its
    children's."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent (field 4) is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    return found


def readers(server: DaphneServer) -> list[int]:
    """The processes reading a PDF for ``server``: the children of its fork server."""
    assert server.process is not None
    for child in children(server.process.pid):
        try:
            if b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                return children(child)
        except OSError:
            pass
    return []


@pytest.fixture(scope="module")
def limited(django_db_setup: None, django_db_blocker: Any) -> Iterator[DaphneServer]:
    """A Slipstream process that gives a PDF one CPU second and a user four uploads an hour
    (per hour: a run that crossed a minute's edge would see a fresh allowance)."""
    with django_db_blocker.unblock():
        env = {**server_env(), "SLIPSTREAM_EXTRACT_CPU_S": "1", "SLIPSTREAM_UPLOAD_RATE": "4/h"}
    with DaphneServer(env=env) as daphne:
        yield daphne


def test_a_pdf_inflating_to_megabytes_costs_the_server_no_cpu(server, slot, user, api_key) -> None:
    """The finding's file: 8 KB inflating to 5 MB of text operators took the server 16.4 s of
    CPU, and slowed a /v1 call beside it. Its one page is past pypdf's limits now, so it is
    refused as too complex; a child process did the reading, and the server answers meanwhile."""
    bomb = pdf_inflating_to(5_000_000)
    assert len(bomb) < 10_000
    assert server.process is not None
    daphne = server.process.pid
    client = session_client(server, user)
    v1 = httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=WAIT_S
    )
    try:
        assert v1.get("/v1/models").status_code == 200  # warm: the key's lookup is cached
        before = cpu_s(daphne)
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(upload, client, "bomb.pdf", bomb)
            wait_until(lambda: readers(server), timeout_s=WAIT_S, what="a reading process")
            started = time.monotonic()
            models = v1.get("/v1/models")
            beside_s = time.monotonic() - started
            refused = sent.result()
        used = cpu_s(daphne) - before
    finally:
        client.close()
        v1.close()
    assert models.status_code == 200
    assert beside_s < 5.0  # loose: the measure is the server's CPU below
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "document_too_complex"
    assert error["message"].startswith('"bomb.pdf" ')
    # The reading's CPU was the child's: the server spent what two small requests cost.
    assert used < 1.5, f"the server process used {used:.2f} s of CPU"


def test_a_reader_killed_is_a_clear_error_and_the_next_pdf_is_read(server, slot, user) -> None:
    """A reading process that dies (here SIGKILL, as the hard CPU limit sends when Python cannot
    stop it) refuses its upload as too slow; the next PDF gets a process of its own."""
    client = session_client(server, user)
    try:
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(upload, client, "endless.pdf", pdf_endless())
            (reader,) = wait_until(lambda: readers(server), timeout_s=WAIT_S, what="a reader")
            os.kill(reader, signal.SIGKILL)
            killed = sent.result()
        assert killed.status_code == 400, killed.text
        error = killed.json()["error"]
        assert error["code"] == "document_too_complex"
        assert "took too long to read" in error["message"]
        assert not readers(server)  # reaped before the answer

        report = upload(client, "report.pdf", pdf_with_text(["Revenue grew by 12 percent"]))
        assert report.status_code == 201, report.text
        assert report.json()["tokens"] > 0
    finally:
        client.close()


def test_a_pdf_past_the_cpu_limit_is_refused_and_the_next_is_read(limited, user) -> None:
    """A few KB that would take pypdf hours (900 million operators, each within its limits):
    stopped at the process's CPU limit (one second here), refused with a clear error; the next
    upload is read as usual."""
    client = session_client(limited, user)
    try:
        endless = upload(client, "endless.pdf", pdf_endless())
        assert endless.status_code == 400, endless.text
        error = endless.json()["error"]
        assert error["code"] == "document_too_complex"
        assert error["message"].startswith('"endless.pdf" took too long to read (over 1 s)')

        report = upload(client, "report.pdf", pdf_with_text(["Quarterly report"]))
        assert report.status_code == 201, report.text
    finally:
        client.close()


def test_the_pages_read_within_the_cpu_limit_are_kept(limited, user) -> None:
    """Past its CPU limit, a reading that has pages keeps them, with a note for the model."""
    client = session_client(limited, user)
    try:
        kept = upload(client, "long.pdf", pdf_endless(preface="Chapter one begins here"))
    finally:
        client.close()
    assert kept.status_code == 201, kept.text
    text = Attachment.objects.get(pk=kept.json()["id"]).text
    assert text == (
        "Chapter one begins here\n\n[Only the first 1 of 51 pages could be read in time.]"
    )


def test_uploads_per_user_are_limited(limited, user) -> None:
    other = get_user_model().objects.create_user(username="grace", password="another horse 7")
    client, neighbour = session_client(limited, user), session_client(limited, other)
    try:
        sent = [upload(client, f"{n}.txt", b"notes") for n in range(5)]
        assert [r.status_code for r in sent] == [201] * 4 + [429]
        error = sent[-1].json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
        assert sent[-1].headers["Retry-After"] == "3600"
        assert upload(neighbour, "mine.txt", b"notes").status_code == 201
    finally:
        client.close()
        neighbour.close()


def test_a_widget_visitors_uploads_count_against_its_limits(server, sim) -> None:
    slot = make_slot(sim.base_url, accepts_images=True)
    widget = Widget.objects.create(
        name="shop",
        slot=slot,
        allowed_origins="https://shop.example",
        accepts_images=True,
        rate_per_minute=1000,
        rate_per_day=2,
    )
    headers = {"Origin": "https://shop.example"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=WAIT_S) as visitor:
        token = visitor.post(f"/widget/{widget.public_key}/visitor/").json()["token"]
        visitor.headers["X-Widget-Visitor"] = token
        sent = [
            visitor.post(
                f"/widget/{widget.public_key}/attachments/",
                files={"file": ("a.png", png(20, 20), "image/png")},
            )
            for _ in range(3)
        ]
    assert [r.status_code for r in sent] == [201, 201, 429]
    assert sent[-1].json()["error"]["code"] == "rate_limited"


def test_attachment_create_reads_a_pdf_in_a_child_too(user) -> None:
    """The sync path (a thread waits for the child) gives what the async view's does."""
    report = SimpleUploadedFile("report.pdf", pdf_with_text(["Revenue grew by 12 percent"]))
    attachment = attachment_create(upload=report, slot=None, user=user)
    assert attachment.mime == "application/pdf"
    assert attachment.text.strip() == "Revenue grew by 12 percent"


def test_what_is_kept_of_a_pdf_read_in_part() -> None:
    read = PdfText(pages=["one", "two"], total=300, skipped=[2], stopped="time")
    assert _pdf_kept(read, "big.pdf") == (
        "one\n\ntwo\n\n[Pages left out, unreadable or too complex: 2.]\n"
        "[Only the first 3 of 300 pages could be read in time.]"
    )
    capped = PdfText(pages=["a"] * 200, total=250, skipped=[], stopped="pages")
    assert _pdf_kept(capped, "long.pdf").endswith(
        "\n\n[Only the first 200 of 250 pages are included.]"
    )
    with pytest.raises(Refusal) as refused:
        _pdf_kept(PdfText(pages=[], total=1, skipped=[1], stopped=""), "bomb.pdf")
    assert refused.value.code == "document_too_complex"
