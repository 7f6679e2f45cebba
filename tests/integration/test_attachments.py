"""Attachments over real HTTP: uploads checked by content, images re-encoded and sent as
``image_url`` parts, documents as their text, files served only to their owner; the simulator
reports what reached it (``last_parts``), so the tests compare exact bytes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core import signing
from django.utils import timezone
from PIL import Image

from chat.attachments import LINK_SALT
from chat.models import Attachment, Backend, Conversation, Message, Widget
from tests.conftest import MEDIA_DIR, make_slot, server_env, session_client
from tests.support.daphne_server import DaphneServer
from tests.support.files import jpeg_with_exif, pdf_with_text, png, png_claiming
from tests.support.sse_client import post_message

pytestmark = pytest.mark.django_db(transaction=True)


def upload(client: httpx.Client, name: str, data: bytes, *, slot: str = "") -> httpx.Response:
    return client.post(
        "/chat/attachments/",
        files={"file": (name, data, "application/octet-stream")},
        data={"slot": slot} if slot else {},
    )


def media_files() -> set[Path]:
    return {p for p in Path(MEDIA_DIR).rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _no_files_yet() -> None:
    """Each test starts with no stored files (the database is flushed between tests, the
    media directory is not)."""
    shutil.rmtree(Path(MEDIA_DIR) / "attachments", ignore_errors=True)


@pytest.fixture
def vision_slot(transactional_db: None, sim: Any) -> Any:
    return make_slot(sim.base_url, accepts_images=True, image_max_side=512)


def test_image_reaches_the_upstream_downscaled_and_without_exif(
    vision_slot, sim, browser_session
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=5)
    photo = jpeg_with_exif(1200, 800)
    assert Image.open(io.BytesIO(photo)).getexif()  # the upload has EXIF to lose

    uploaded = upload(browser_session, "holiday.jpg", photo, slot="primary")
    assert uploaded.status_code == 201, uploaded.text
    described = uploaded.json()
    assert (described["kind"], described["mime"]) == ("image", "image/jpeg")
    assert (described["width"], described["height"]) == (512, 341)

    stored = browser_session.get(described["url"])
    assert stored.status_code == 200
    assert stored.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(stored.content))
    assert image.size == (512, 341)
    assert not image.getexif()
    assert "exif" not in image.info

    answer = post_message(browser_session, "What is in this photo?", attachments=[described["id"]])
    assert answer.status_code == 200
    parts = sim.stats()["last_parts"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert parts[1]["media_type"] == "image/jpeg"
    assert parts[1]["sha256"] == hashlib.sha256(stored.content).hexdigest()
    assert parts[1]["bytes"] == len(stored.content)
    message = Message.objects.get(pk=answer.meta("slipstream.message")["user_message_id"])
    assert message.attachment_ids == [described["id"]]
    attachment = Attachment.objects.get(pk=described["id"])
    assert attachment.conversation_id == message.conversation_id


def test_a_smaller_slot_side_downscales_again_at_send_time(sim, browser_session) -> None:
    make_slot(sim.base_url, accepts_images=True, image_max_side=1024)
    make_slot(sim.base_url, name="small", accepts_images=True, image_max_side=100)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    described = upload(browser_session, "wide.png", png(1600, 400), slot="primary").json()
    assert (described["width"], described["height"]) == (1024, 256)

    post_message(browser_session, "Describe", attachments=[described["id"]], slot="small")
    sent = sim.stats()["last_request"]["messages"][-1]["content"][1]["image_url"]["url"]
    header, _, data = sent.partition(",")
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (100, 25)


def test_documents_go_as_text_within_the_slots_budget(sim, browser_session) -> None:
    make_slot(sim.base_url, document_tokens=100)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    notes = "".join(f"line {i:04d} of the notes\n" for i in range(100))  # 2,200 characters
    pdf = pdf_with_text(["Quarterly report", "Revenue grew by 12 percent"])

    md = upload(browser_session, "notes.md", notes.encode(), slot="primary").json()
    assert (md["kind"], md["mime"], md["truncated"], md["tokens"]) == (
        "document",
        "text/markdown",
        True,
        100,
    )
    report = upload(browser_session, "report.pdf", pdf, slot="primary").json()
    assert (report["mime"], report["truncated"]) == ("application/pdf", False)

    post_message(browser_session, "Summarise both", attachments=[report["id"], md["id"]])
    content = sim.stats()["last_request"]["messages"][-1]["content"]
    assert isinstance(content, str)  # documents only: one string, as text-only servers want
    assert content.startswith('Attached document "report.pdf":\n\nQuarterly report')
    assert "Revenue grew by 12 percent" in content
    assert content.endswith("Summarise both")
    # 400 characters (100 tokens) for both documents: the PDF's text, then the start of notes.
    pdf_text = Attachment.objects.get(pk=report["id"]).text
    kept_of_notes = notes[: 400 - len(pdf_text)]
    assert f'Attached document "notes.md":\n\n{kept_of_notes}\n[Cut here:' in content
    assert notes[: len(kept_of_notes) + 1] not in content


def test_regenerate_sends_the_stored_text_again(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    doc = upload(browser_session, "a.txt", b"The secret word is lantern.").json()
    first = post_message(browser_session, "What is the word?", attachments=[doc["id"]])
    sent = sim.stats()["last_request"]["messages"]
    meta = first.meta("slipstream.message")
    # The stored text is what is sent: change the file on disk, the request stays the same.
    Path(Attachment.objects.get(pk=doc["id"]).file.path).write_bytes(b"changed")
    again = post_message(
        browser_session,
        "",
        conversation=meta["conversation_id"],
        regenerate=meta["user_message_id"],
    )
    assert again.status_code == 200
    assert sim.stats()["last_request"]["messages"] == sent


def test_an_edit_keeps_the_originals_attachments(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    doc = upload(browser_session, "spec.txt", b"The port is 8443.").json()
    first = post_message(browser_session, "Which port?", attachments=[doc["id"]])
    meta = first.meta("slipstream.message")
    edited = post_message(
        browser_session,
        "Which port, exactly?",
        conversation=meta["conversation_id"],
        parent=None,
        attachments=[doc["id"]],
    )
    assert edited.status_code == 200
    content = sim.stats()["last_request"]["messages"][-1]["content"]
    assert content == 'Attached document "spec.txt":\n\nThe port is 8443.\n\nWhich port, exactly?'
    versions = Message.objects.filter(role="user", parent=None).order_by("pk")
    assert [m.attachment_ids for m in versions] == [[doc["id"]], [doc["id"]]]


def test_an_image_to_a_text_only_slot_is_refused_before_the_call(
    slot, sim, browser_session
) -> None:
    image = upload(browser_session, "shot.png", png(64, 64)).json()
    requests_before = sim.stats()["requests"]
    refused = post_message(browser_session, "Look", attachments=[image["id"]])
    assert refused.status_code == 400
    error = json.loads(refused.events[0].data)["error"]
    assert error["code"] == "images_not_supported"
    assert "does not read images" in error["message"]
    assert sim.stats()["requests"] == requests_before
    assert not Message.objects.exists()
    assert not Conversation.objects.exists()


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("setup.exe", b"MZ\x90\x00\x03" + bytes(200), 415, "unsupported_file_type"),
        ("fake.png", b"\x89PNG\r\n\x1a\nnot really", 415, "unsupported_file_type"),
        ("bomb.png", png_claiming(20_000, 20_000), 413, "image_too_large"),
    ],
)
def test_uploads_are_checked_by_content(
    slot, browser_session, name: str, data: bytes, status: int, code: str
) -> None:
    refused = upload(browser_session, name, data)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["code"] == code
    assert not Attachment.objects.exists()
    assert not media_files()


def test_a_file_over_the_limit_is_refused(slot, browser_session) -> None:
    big = upload(browser_session, "big.txt", b"x" * (20 * 2**20 + 1))
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "file_too_large"
    assert not media_files()


def test_files_are_served_to_their_owner_and_share_viewers_only(
    slot, sim, server, user, browser_session
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    image_bytes = upload(browser_session, "mine.png", png(32, 32)).json()
    doc = upload(browser_session, "mine.txt", b"private notes").json()
    answer = post_message(browser_session, "Keep these", attachments=[doc["id"]])
    conversation = Conversation.objects.get(pk=answer.meta("slipstream.message")["conversation_id"])

    assert (
        browser_session.get(image_bytes["url"]).headers["content-disposition"].startswith("inline")
    )
    own = browser_session.get(doc["url"])
    assert (own.status_code, own.content) == (200, b"private notes")
    assert own.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in own.headers["content-security-policy"]

    eve = get_user_model().objects.create_user(username="eve", password="another horse 42")
    other = session_client(server, eve)
    try:
        assert other.get(doc["url"]).status_code == 404
        assert other.get(image_bytes["url"]).status_code == 404
        assert other.get(doc["url"] + f"?share={conversation.pk}").status_code == 404
        browser_session.post(f"/c/{conversation.pk}/share/", data={"shared": "on"})
        conversation.refresh_from_db()
        assert conversation.share_id is not None
        shared = other.get(doc["url"] + f"?share={conversation.share_id}")
        assert (shared.status_code, shared.content) == (200, b"private notes")
        page = other.get(f"/s/{conversation.share_id}/")
        assert f"{doc['url']}?share={conversation.share_id}" in page.text
        # Not sent in the shared conversation: the share link does not reach it.
        assert other.get(image_bytes["url"] + f"?share={conversation.share_id}").status_code == 404
    finally:
        other.close()
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert anonymous.get(doc["url"]).status_code in (302, 404)


def test_attachments_of_others_or_sent_elsewhere_are_refused(
    slot, sim, server, browser_session
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    doc = upload(browser_session, "a.txt", b"hello").json()
    first = post_message(browser_session, "One", attachments=[doc["id"]])
    assert first.status_code == 200
    # Sent in one conversation, it cannot be named in a new one.
    elsewhere = post_message(browser_session, "Two", attachments=[doc["id"]])
    assert elsewhere.status_code == 404
    eve = get_user_model().objects.create_user(username="eve", password="another horse 42")
    theirs = upload(browser_session, "b.txt", b"mine").json()
    other = session_client(server, eve)
    try:
        stolen = post_message(other, "Give", attachments=[theirs["id"]])
        assert stolen.status_code == 404
        assert post_message(other, "Bad id", attachments=["not-a-uuid"]).status_code == 404
        assert post_message(other, "Bad type", attachments=[1]).status_code == 400
    finally:
        other.close()


def test_deleting_a_conversation_deletes_its_files(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    doc = upload(browser_session, "a.txt", b"to be deleted").json()
    answer = post_message(browser_session, "Keep", attachments=[doc["id"]])
    conversation_id = answer.meta("slipstream.message")["conversation_id"]
    assert len(media_files()) == 1
    deleted = browser_session.post(f"/c/{conversation_id}/delete/")
    assert deleted.status_code in (200, 204, 302)
    assert not Attachment.objects.exists()
    assert not media_files()


def test_uploads_never_sent_are_purged_after_a_day(slot, sim, browser_session) -> None:
    from asgiref.sync import async_to_sync

    from chat.attachments import UNSENT_KEPT, purge_unsent

    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    sent = upload(browser_session, "sent.txt", b"kept").json()
    post_message(browser_session, "Keep", attachments=[sent["id"]])
    stale = upload(browser_session, "stale.txt", b"forgotten").json()
    upload(browser_session, "fresh.txt", b"about to be sent")
    day_ago = timezone.now() - UNSENT_KEPT - timedelta(minutes=1)
    Attachment.objects.filter(pk__in=[sent["id"], stale["id"]]).update(created_at=day_ago)
    stale_file = Path(Attachment.objects.get(pk=stale["id"]).file.path)

    assert async_to_sync(purge_unsent)() == 1
    assert set(Attachment.objects.values_list("name", flat=True)) == {"sent.txt", "fresh.txt"}
    assert not stale_file.exists()
    assert len(media_files()) == 2


def test_exports_reference_attachments(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    doc = upload(browser_session, "plan.md", b"# Plan").json()
    image = upload(browser_session, "pic.png", png(16, 16)).json()
    slot.accepts_images = True
    slot.save()
    answer = post_message(browser_session, "Both", attachments=[doc["id"], image["id"]])
    conversation_id = answer.meta("slipstream.message")["conversation_id"]

    exported = browser_session.get(f"/c/{conversation_id}/export.json").json()
    files = exported["messages"][0]["attachments"]
    assert [(f["name"], f["kind"]) for f in files] == [
        ("plan.md", "document"),
        ("pic.png", "image"),
    ]
    assert files[0]["url"].endswith(doc["url"])
    assert files[0]["url"].startswith("http")
    markdown = browser_session.get(f"/c/{conversation_id}/export.md").text
    assert f"[plan.md]({files[0]['url']})" in markdown
    assert f"![pic.png]({files[1]['url']})" in markdown


def test_the_thread_shows_attachments_after_a_reload(slot, sim, browser_session) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    doc = upload(browser_session, "long.txt", b"word " * 40_000).json()
    answer = post_message(browser_session, "Read it", attachments=[doc["id"]])
    page = browser_session.get(answer.meta("slipstream.message")["conversation_url"]).text
    assert f'data-attachment-ids="{doc["id"]}"' in page
    assert "long.txt" in page
    assert "Only the first 8000 tokens are sent" in page


def test_quota_of_stored_bytes(slot, browser_session, settings) -> None:
    from chat.attachments import attachment_create
    from chat.http import Refusal

    class Upload(io.BytesIO):
        name = "big.txt"
        size = 600

    user = get_user_model().objects.get(username="ada")
    settings.SLIPSTREAM_ATTACHMENT_QUOTA_BYTES = 1000
    attachment_create(upload=Upload(b"a" * 600), slot=slot, user=user)  # type: ignore[arg-type]
    with pytest.raises(Refusal) as refused:
        attachment_create(upload=Upload(b"b" * 600), slot=slot, user=user)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.code) == (413, "quota_exceeded")
    assert Attachment.objects.count() == 1


# ------------------------------------------------------------------------------------------------
# The widget
# ------------------------------------------------------------------------------------------------
def widget_client(server: Any, widget: Widget) -> httpx.Client:
    client = httpx.Client(base_url=server.base_url, headers={"Origin": "https://shop.example"})
    token = client.post(f"/widget/{widget.public_key}/visitor/").json()["token"]
    client.headers["X-Widget-Visitor"] = token
    return client


def test_widget_images_only_when_the_widget_takes_them(vision_slot, sim, server) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    widget = Widget.objects.create(
        name="shop", slot=vision_slot, allowed_origins="https://shop.example"
    )
    visitor = widget_client(server, widget)
    try:
        path = f"/widget/{widget.public_key}/attachments/"
        off = visitor.post(path, files={"file": ("a.png", png(40, 40), "image/png")})
        assert (off.status_code, off.json()["error"]["code"]) == (403, "images_not_allowed")

        widget.accepts_images = True
        widget.image_max_bytes = 2000
        widget.save()
        doc = visitor.post(path, files={"file": ("a.txt", b"text", "text/plain")})
        assert doc.status_code == 415
        big = visitor.post(path, files={"file": ("big.png", png(400, 400, (1, 2, 3)) * 10, "")})
        assert big.status_code == 413
        image = visitor.post(path, files={"file": ("a.png", png(40, 40), "image/png")})
        assert image.status_code == 201, image.text
        stored = Attachment.objects.get(pk=image.json()["id"])
        assert (stored.user_id, stored.widget_id) == (None, widget.pk)

        with visitor.stream(
            "POST",
            f"/widget/{widget.public_key}/stream/",
            json={"content": "What is this?", "attachments": [image.json()["id"]]},
        ) as answer:
            assert answer.status_code == 200
            answer.read()
        parts = sim.stats()["last_parts"]
        assert [p["type"] for p in parts[-2:]] == ["text", "image_url"]
        assert parts[-1]["sha256"] == stored.sha256

        # Coming back, the visitor's history shows the image by a signed link (no session).
        history = visitor.get(f"/widget/{widget.public_key}/conversation/").json()
        (shown,) = history["messages"][0]["attachments"]
        assert (shown["id"], shown["kind"]) == (str(stored.pk), "image")
        assert shown["url"].startswith("/chat/attachments/link/")
        with httpx.Client(base_url=server.base_url) as anyone, stored.file.open("rb") as file:
            assert anyone.get(shown["url"]).content == file.read()
    finally:
        visitor.close()


# ------------------------------------------------------------------------------------------------
# /v1: content parts pass through unchanged, within limits
# ------------------------------------------------------------------------------------------------
def image_part(data: bytes) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url, "detail": "low"}}


def test_sdk_image_parts_reach_the_upstream_unchanged(vision_slot, sim, openai_client) -> None:
    import openai

    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    picture = png(3000, 20)  # larger than the slot's side: /v1 passes it through as it is
    # A literal public address: a name would have to resolve, and only to public addresses
    # (chat.media_urls), on a machine that may have no DNS.
    cat = "https://93.184.215.14/cat.png"
    remote = {"type": "image_url", "image_url": {"url": cat}}
    content = [{"type": "text", "text": "Compare"}, image_part(picture), remote]
    reply = openai_client.chat.completions.create(
        model="primary", messages=[{"role": "user", "content": content}]
    )
    assert reply.choices[0].message.content
    assert sim.stats()["last_request"]["messages"][0]["content"] == content
    parts = sim.stats()["last_parts"]
    assert parts[1]["sha256"] == hashlib.sha256(picture).hexdigest()
    assert parts[2] == {"message": 0, "type": "image_url", "url": cat}

    vision_slot.accepts_images = False
    vision_slot.save()
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": content}]
        )
    assert refused.value.code == "images_not_supported"


def test_v1_limits_on_content_parts(vision_slot, sim, openai_client) -> None:
    import openai

    requests_before = sim.stats()["requests"]
    many = [image_part(png(2, 2))] * 21
    with pytest.raises(openai.BadRequestError) as too_many:
        openai_client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": many}]
        )
    assert too_many.value.code == "too_many_parts"
    assert too_many.value.param == "messages[0].content[20]"
    huge = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 11 * 2**20}}
    with pytest.raises(openai.APIStatusError) as too_big:
        openai_client.chat.completions.create(
            model="primary", messages=[{"role": "user", "content": [huge]}]
        )
    assert too_big.value.status_code == 413
    assert too_big.value.code == "part_too_large"
    assert sim.stats()["requests"] == requests_before


@pytest.mark.parametrize("path", ["native", "translate"])
def test_responses_input_images_reach_the_upstream_within_the_same_limits(
    vision_slot, sim, openai_client, path: str
) -> None:
    import openai

    Backend.objects.update(responses_api=path)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    picture = png(40, 30)
    url = "data:image/png;base64," + base64.b64encode(picture).decode()
    image = {"type": "input_image", "image_url": url, "detail": "auto"}
    question = {"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}
    response = openai_client.responses.create(model="primary", input=[question])
    assert response.status == "completed"
    assert ("messages" in sim.stats()["last_request"]) == (path == "translate")
    parts = sim.stats()["last_parts"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert parts[1]["sha256"] == hashlib.sha256(picture).hexdigest()

    requests_before = sim.stats()["requests"]
    crowded = {"role": "user", "content": [image] * 21}
    with pytest.raises(openai.BadRequestError) as too_many:
        openai_client.responses.create(model="primary", input=[crowded])
    assert too_many.value.param == "input[0].content[20]"
    vision_slot.accepts_images = False
    vision_slot.save()
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.responses.create(model="primary", input=[question])
    assert refused.value.code == "images_not_supported"
    assert sim.stats()["requests"] == requests_before


# ------------------------------------------------------------------------------------------------
# Whether a slot reads images, asked of its server
# ------------------------------------------------------------------------------------------------
def test_the_admin_asks_the_server_whether_it_reads_images(slot, sim, server) -> None:
    admin = get_user_model().objects.create_superuser("root", password="r" * 20)
    staff = session_client(server, admin)
    action = {"action": "detect_images", "_selected_action": [str(slot.pk)]}
    try:
        sim.configure(vision=True)
        said = staff.post("/admin/chat/slot/", data=action, follow_redirects=True)
        # (the admin's message list capitalises the first letter)
        assert "Primary: reads images (GET /props)." in said.text
        slot.refresh_from_db()
        assert slot.accepts_images

        sim.configure(vision=None)
        silent = staff.post("/admin/chat/slot/", data=action, follow_redirects=True)
        assert "Primary: the server does not say whether sim reads images" in silent.text
        slot.refresh_from_db()
        assert slot.accepts_images  # left as it was
    finally:
        staff.close()


# ------------------------------------------------------------------------------------------------
# Images as signed links, for servers that fetch them
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def linking_server(django_db_blocker: Any) -> Iterator[DaphneServer]:
    """A Slipstream process that knows its own address (``SLIPSTREAM_PUBLIC_URL``)."""
    with django_db_blocker.unblock():
        env = server_env()
    daphne = DaphneServer(env=env)
    daphne.env = {**env, "SLIPSTREAM_PUBLIC_URL": daphne.base_url}
    with daphne:
        yield daphne


def test_images_as_short_lived_signed_links(sim, user, linking_server) -> None:
    make_slot(sim.base_url, accepts_images=True, image_max_side=300, image_links=True)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    client = session_client(linking_server, user)
    try:
        image = client.post(
            "/chat/attachments/", files={"file": ("wide.png", png(600, 200), "image/png")}
        ).json()
        post_message(client, "What is it?", attachments=[image["id"]])
        link = sim.stats()["last_parts"][1]["url"]
        assert link.startswith(linking_server.base_url + "/chat/attachments/link/")

        with httpx.Client() as server_side:  # no session: as a model server fetches it
            fetched = server_side.get(link)
            assert fetched.status_code == 200
            assert fetched.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(fetched.content)).size == (300, 100)
            assert server_side.get(link[:-3] + "xx/").status_code == 404

            # The same claims signed now work; signed 301 s ago (the TTL is 300 s), they do not.
            claims = {"a": image["id"].replace("-", ""), "s": 300}

            class LongAgo(signing.TimestampSigner):
                def timestamp(self) -> str:
                    return signing.b62_encode(int(time.time()) - 301)

            links = linking_server.base_url + "/chat/attachments/link/"
            fresh = signing.TimestampSigner(salt=LINK_SALT).sign_object(claims)
            assert server_side.get(f"{links}{fresh}/").status_code == 200
            expired = LongAgo(salt=LINK_SALT).sign_object(claims)
            assert server_side.get(f"{links}{expired}/").status_code == 404
    finally:
        client.close()
