"""Attachments: files sent with a chat or widget message. Images go to vision models as OpenAI
``image_url`` content parts; documents (PDF, text, Markdown, code, CSV) go as their extracted
text, within the slot's token budget.

- ``attachment_create`` (``attachment_acreate`` for async views): check an upload by its
  content (never its name or the browser's type), guard against decompression bombs, re-encode
  images without their metadata (EXIF, GPS) at the slot's largest side, extract a document's
  text once (a PDF's in a process of its own, under CPU and memory limits: ``chat.extraction``),
  store it, count it against the owner's quota of stored bytes.
- ``for_message``: the attachments a new message names, checked (its owner's, not sent in
  another conversation, within the per-message limits, images only to a slot that reads them).
- ``upstream_history``: a thread as OpenAI ``messages`` with each message's attachments as
  content parts (OpenAI API reference, "Chat Completions", ``ChatCompletionRequestUserMessage``
  content parts ``text`` and ``image_url`` with a ``data:`` URL).

Raises ``Refusal`` (``chat.http``): 400 (unreadable, too complex to read within the limits, a
text-only slot), 404 (not the user's), 413 (too large, quota used up), 415 (a type not
accepted).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import math
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone
from PIL import Image, ImageOps, UnidentifiedImageError

from chat import extraction, selectors, services
from chat.http import Refusal, invalid
from chat.models import (
    DOCUMENT_TOKENS,
    IMAGE_MAX_SIDE,
    Attachment,
    Conversation,
    Message,
    Slot,
    Widget,
)

logger = logging.getLogger(__name__)

# Raster formats vision servers decode (llama.cpp's stb_image, vLLM's Pillow, Ollama): stored as
# PNG, or JPEG when they came as JPEG. WebP and GIF (first frame) become PNG.
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
# Text documents by extension: the content decides that it is text, the name only which label.
TEXT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".csv": "text/csv",
    ".json": "application/json",
}
CODE_EXTENSIONS = [
    ".txt",
    ".py",
    ".js",
    ".mjs",
    ".ts",
    ".tsx",
    ".jsx",
    ".java",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".cs",
    ".go",
    ".rs",
    ".rb",
    ".php",
    ".swift",
    ".kt",
    ".scala",
    ".sh",
    ".sql",
    ".html",
    ".css",
    ".xml",
    ".yaml",
    ".yml",
    ".toml",
    ".ini",
    ".cfg",
    ".log",
    ".tex",
    ".r",
    ".lua",
    ".pl",
]
# What the file picker offers (its ``accept``): the content is checked whatever it says.
ACCEPT = ",".join(
    [*IMAGE_FORMATS.values(), "application/pdf", "text/*", *TEXT_TYPES, *CODE_EXTENSIONS]
)
# Extracted text kept per document, characters: a budget far above any slot's.
MAX_TEXT_CHARS = 2_000_000
# A PDF's pages read, from the first: 200 pages of text are over 100,000 tokens.
MAX_PDF_PAGES = 200
PDF_MAGIC = b"%PDF-"
CHARS_PER_TOKEN = 4  # the usual estimate for English text with BPE tokenizers
LINK_SALT = "chat.attachments.image-link"
# An upload not sent with a message within this long is deleted (``purge_unsent``).
UNSENT_KEPT = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Limits:
    """The attachment limits, bytes: per file, per message, a user's stored total; and the
    count per message. Shown to the composer so it refuses before uploading."""

    max_bytes: int
    max_count: int
    message_max_bytes: int
    quota_bytes: int
    accept: str = ACCEPT


def limits() -> Limits:
    return Limits(
        max_bytes=settings.SLIPSTREAM_ATTACHMENT_MAX_BYTES,
        max_count=settings.SLIPSTREAM_ATTACHMENT_MAX_COUNT,
        message_max_bytes=settings.SLIPSTREAM_MESSAGE_MAX_BYTES,
        quota_bytes=settings.SLIPSTREAM_ATTACHMENT_QUOTA_BYTES,
    )


def tokens_of(text: str) -> int:
    """Estimated tokens of ``text`` (no tokenizer is at hand for every upstream)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def describe(attachment: Attachment) -> dict[str, Any]:
    """An attachment as the composer and exports show it: ``{"id", "name", "kind", "mime",
    "size" (bytes), "url", "width", "height" (px or None), "tokens", "truncated"}``."""
    return {
        "id": str(attachment.pk),
        "name": attachment.name,
        "kind": attachment.kind,
        "mime": attachment.mime,
        "size": attachment.size_bytes,
        "url": attachment.url,
        "width": attachment.width,
        "height": attachment.height,
        "tokens": attachment.text_tokens,
        "truncated": attachment.text_truncated,
    }


# ------------------------------------------------------------------------------------------------
# Upload
# ------------------------------------------------------------------------------------------------
def attachment_create(
    *,
    upload: UploadedFile[bytes],
    slot: Slot | None,
    user: User | None = None,
    widget: Widget | None = None,
    visitor_id: Any = None,
) -> Attachment:
    """Store ``upload`` for ``user`` (or a widget's visitor), made ready for ``slot`` (its image
    side and document budget; the defaults without one). Raises ``Refusal`` 413 (over the size
    limit, the widget's image limit, the user's quota, too many pixels), 415 (not an accepted
    type, by content; a widget takes images only), 400 (an image or PDF that cannot be read, or
    not within ``chat.extraction``'s limits). A PDF's text is waited for in this thread: async
    views call ``attachment_acreate``."""
    data, name = _read(upload, widget)
    pdf_text = _pdf_text(data, name) if widget is None and data.startswith(PDF_MAGIC) else None
    return _store(data, name, pdf_text, slot=slot, user=user, widget=widget, visitor_id=visitor_id)


async def attachment_acreate(
    *, upload: UploadedFile[bytes], slot: Slot | None, user: User
) -> Attachment:
    """``attachment_create`` for a signed-in user, in an async view: a PDF's text is awaited from
    the process that reads it without holding a thread; reading the upload and storing it run
    in the request's sync thread."""
    data, name = await sync_to_async(_read)(upload, None)
    pdf_text = await _apdf_text(data, name) if data.startswith(PDF_MAGIC) else None
    return await sync_to_async(_store)(data, name, pdf_text, slot=slot, user=user)


def _read(upload: UploadedFile[bytes], widget: Widget | None) -> tuple[bytes, str]:
    """The upload's bytes and name; ``Refusal`` 413 over the size limit (the widget's image
    limit for a widget)."""
    limit = (
        widget.image_max_bytes if widget is not None else settings.SLIPSTREAM_ATTACHMENT_MAX_BYTES
    )
    size = upload.size or 0
    if size > limit:
        raise too_large(upload.name or "file", size, limit)
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise too_large(upload.name or "file", len(data), limit)
    return data, (upload.name or "file")[-255:]


def _store(
    data: bytes,
    name: str,
    pdf_text: str | None,
    *,
    slot: Slot | None,
    user: User | None = None,
    widget: Widget | None = None,
    visitor_id: Any = None,
) -> Attachment:
    """``attachment_create`` once the upload is read, and a PDF's text with it."""
    attachment = Attachment(user=user, widget=widget, visitor_id=visitor_id, name=name)
    if _is_image(data):
        side = slot.image_max_side if slot else IMAGE_MAX_SIDE
        side = min(settings.SLIPSTREAM_IMAGE_STORE_MAX_SIDE, side)
        stored, attachment.mime, attachment.width, attachment.height = _reencode(data, side)
        attachment.kind = Attachment.Kind.IMAGE
    elif widget is not None:
        raise invalid(
            "Only images can be attached here.",
            param="file",
            code="unsupported_file_type",
            status=415,
        )
    else:
        attachment.mime, attachment.text = _document(data, name, pdf_text)
        stored = data
        attachment.kind = Attachment.Kind.DOCUMENT
        budget = (slot.document_tokens if slot else DOCUMENT_TOKENS) * CHARS_PER_TOKEN
        attachment.text_truncated = len(attachment.text) > budget
        attachment.text_tokens = tokens_of(attachment.text[:budget])
    if user is not None:
        _check_quota(user, len(stored))
    attachment.size_bytes = len(stored)
    attachment.sha256 = hashlib.sha256(stored).hexdigest()
    attachment.file.save(attachment.pk.hex, ContentFile(stored), save=False)
    attachment.save()
    return attachment


def too_large(name: str, size: int, limit: int) -> Refusal:
    return invalid(
        f'"{name}" is {size / 2**20:.1f} MB; the limit is {limit / 2**20:.1f} MB.',
        param="file",
        code="file_too_large",
        status=413,
    )


def _check_quota(user: User, size: int) -> None:
    used = Attachment.objects.filter(user=user).aggregate(total=Sum("size_bytes"))["total"] or 0
    quota = settings.SLIPSTREAM_ATTACHMENT_QUOTA_BYTES
    if used + size > quota:
        raise invalid(
            f"Your stored files would pass your {quota / 2**20:.0f} MB quota; delete "
            "conversations with attachments to make room.",
            param="file",
            code="quota_exceeded",
            status=413,
        )


@contextmanager
def _opened(data: bytes) -> Iterator[Image.Image]:
    """``Image.open`` (which reads the header only), with Pillow's own decompression-bomb
    check left to ours: the pixel limit is ``SLIPSTREAM_IMAGE_MAX_PIXELS``, checked on the
    header's size before anything is decoded (``_reencode``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise _too_many_pixels(str(exc)) from exc
    with image:
        yield image


def _too_many_pixels(detail: str) -> Refusal:
    return invalid(
        f"The image has too many pixels ({detail}); the limit is "
        f"{settings.SLIPSTREAM_IMAGE_MAX_PIXELS:,} pixels.",
        param="file",
        code="image_too_large",
        status=413,
    )


def _is_image(data: bytes) -> bool:
    try:
        with _opened(data) as image:
            return image.format in IMAGE_FORMATS
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    except Refusal:
        return True  # a bomb's header: _reencode refuses it


def _reencode(data: bytes, side: int) -> tuple[bytes, str, int, int]:
    """The image without metadata, turned upright (its EXIF orientation), its longer side at
    most ``side`` px: ``(bytes, mime, width, height)``. The pixel count is checked from the
    header before anything is decoded."""
    try:
        with _opened(data) as image:
            width, height = image.size
            if width * height > settings.SLIPSTREAM_IMAGE_MAX_PIXELS:
                raise _too_many_pixels(f"{width}×{height}")
            jpeg = image.format == "JPEG"
            upright = ImageOps.exif_transpose(image)
            upright.thumbnail((side, side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            if jpeg:
                upright.convert("RGB").save(out, "JPEG", quality=90)
            else:
                if upright.mode not in ("RGB", "RGBA", "L", "LA"):
                    upright = upright.convert("RGBA")
                upright.save(out, "PNG", optimize=False)
            return out.getvalue(), "image/jpeg" if jpeg else "image/png", *upright.size
    except (OSError, ValueError) as exc:
        raise invalid(f"The image could not be read: {exc}", param="file") from exc


def _document(data: bytes, name: str, pdf_text: str | None) -> tuple[str, str]:
    """``(mime, text)`` of a PDF (``pdf_text``, read by ``_pdf_text``) or a text file;
    ``Refusal`` 415 for anything else."""
    if pdf_text is not None:
        return "application/pdf", pdf_text
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = ""
    if not text or "\x00" in text:
        raise invalid(
            f'"{name}" is not an image, a PDF or a text file.',
            param="file",
            code="unsupported_file_type",
            status=415,
        )
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    return TEXT_TYPES.get(suffix, "text/plain"), text[:MAX_TEXT_CHARS]


def _read_pdf(data: bytes) -> Future[extraction.PdfText]:
    limits = extraction.ReadLimits(
        cpu_s=settings.SLIPSTREAM_EXTRACT_CPU_S,
        memory_bytes=settings.SLIPSTREAM_EXTRACT_MEMORY_MB * 2**20,
        max_pages=MAX_PDF_PAGES,
        max_chars=MAX_TEXT_CHARS,
    )
    return extraction.pdf_text(data, limits, workers=settings.SLIPSTREAM_EXTRACT_WORKERS)


def _pdf_text(data: bytes, name: str) -> str:
    """A PDF's text (``_pdf_kept``), waited for in this thread."""
    try:
        read = _read_pdf(data).result()
    except extraction.ExtractionFailed as exc:
        raise _unread(exc, name) from exc
    return _pdf_kept(read, name)


async def _apdf_text(data: bytes, name: str) -> str:
    """``_pdf_text``, awaited on the event loop."""
    try:
        read = await asyncio.wrap_future(_read_pdf(data))
    except extraction.ExtractionFailed as exc:
        raise _unread(exc, name) from exc
    return _pdf_kept(read, name)


def _pdf_kept(read: extraction.PdfText, name: str) -> str:
    """The text kept of a PDF, at most ``MAX_TEXT_CHARS``: its pages' text, then a note for the
    model of pages left out (past pypdf's limits, or broken) or not read (``read.stopped``).
    ``Refusal`` 400 when every page read was left out."""
    if read.skipped and not read.pages:
        raise _unread(extraction.ExtractionFailed("complex"), name)
    notes = []
    if read.skipped:
        shown = ", ".join(str(n) for n in read.skipped[:10])
        more = f" and {len(read.skipped) - 10} more" if len(read.skipped) > 10 else ""
        notes.append(f"[Pages left out, unreadable or too complex: {shown}{more}.]")
    if read.stopped:
        done = len(read.pages) + len(read.skipped)
        how = {"time": " could be read in time", "memory": " could be read"}.get(
            read.stopped, " are included"
        )
        notes.append(f"[Only the first {done} of {read.total} pages{how}.]")
    note = "\n\n" + "\n".join(notes) if notes else ""
    return "\n\n".join(read.pages)[: MAX_TEXT_CHARS - len(note)] + note


def _unread(exc: extraction.ExtractionFailed, name: str) -> Refusal:
    """The 400 for a PDF whose text could not be had (``ExtractionFailed.reason``)."""
    if exc.reason == "encrypted":
        return invalid("The PDF is encrypted with a password.", param="file")
    if exc.reason == "unreadable":
        return invalid(f"The PDF could not be read: {exc.detail}", param="file")
    cpu_s, memory_mb = settings.SLIPSTREAM_EXTRACT_CPU_S, settings.SLIPSTREAM_EXTRACT_MEMORY_MB
    why = {
        "slow": f"took too long to read (over {cpu_s} s)",
        "memory": f"needs too much memory to read (over {memory_mb} MB)",
        "complex": "has no page whose text could be read within the limits",
    }[exc.reason]
    return invalid(
        f'"{name}" {why}: its text could not be extracted. Try a smaller or simpler PDF, or '
        "paste its text into the message.",
        param="file",
        code="document_too_complex",
    )


# ------------------------------------------------------------------------------------------------
# Send
# ------------------------------------------------------------------------------------------------
async def for_message(
    ids: Iterable[str],
    *,
    slot: Slot,
    conversation: Conversation | None,
    user: User | None = None,
    widget: Widget | None = None,
    visitor_id: Any = None,
) -> list[Attachment]:
    """The attachments a new message names, in its order: the sender's, not yet sent or sent in
    this ``conversation`` (an edit keeps them). Raises ``Refusal`` 404 (an unknown id), 400 (too
    many; an image to a slot that does not read images), 413 (over the message's bytes)."""
    wanted = list(dict.fromkeys(str(i) for i in ids))
    if not wanted:
        return []
    if len(wanted) > settings.SLIPSTREAM_ATTACHMENT_MAX_COUNT:
        raise invalid(
            f"At most {settings.SLIPSTREAM_ATTACHMENT_MAX_COUNT} attachments per message.",
            param="attachments",
        )
    owned = Attachment.objects.filter(user=user, widget=widget, visitor_id=visitor_id)
    found = {}
    try:
        async for attachment in owned.filter(pk__in=wanted):
            found[str(attachment.pk)] = attachment
    except ValidationError as exc:  # a malformed UUID
        raise _unknown() from exc
    attachments = [found[i] for i in wanted if i in found]
    if len(attachments) != len(wanted) or any(
        a.conversation_id not in (None, conversation.pk if conversation else None)
        for a in attachments
    ):
        raise _unknown()
    total = sum(a.size_bytes for a in attachments)
    if total > settings.SLIPSTREAM_MESSAGE_MAX_BYTES:
        raise invalid(
            f"The attachments are {total / 2**20:.1f} MB together; the limit is "
            f"{settings.SLIPSTREAM_MESSAGE_MAX_BYTES / 2**20:.1f} MB per message.",
            param="attachments",
            code="file_too_large",
            status=413,
        )
    check_images(attachments, slot)
    return attachments


def _unknown() -> Refusal:
    return invalid("Unknown attachment.", param="attachments", status=404)


def check_images(attachments: Iterable[Attachment], slot: Slot) -> None:
    """``Refusal`` 400 when an image goes to a slot that does not read images."""
    if not slot.accepts_images and any(a.kind == Attachment.Kind.IMAGE for a in attachments):
        raise invalid(
            f"{slot.label} does not read images. Pick a model that does, or remove the image.",
            param="attachments",
            code="images_not_supported",
        )


async def upstream_history(thread: list[Message], *, slot: Slot) -> list[dict[str, Any]]:
    """``thread`` as OpenAI ``messages`` (``selectors.history_for_upstream``), each message with
    attachments as content: its documents' text first, within ``slot.document_tokens`` for the
    message, then its own text; images as ``image_url`` parts (``_image_url``),
    downscaled to ``slot.image_max_side``. A message with documents only stays one string, which
    text-only servers that refuse content arrays still read. Raises ``Refusal`` 400 when an
    image goes to a slot that does not read images. No query when nothing is attached."""
    with_files = [m for m in thread if m.attachment_ids]
    if not with_files:
        return selectors.history_for_upstream(thread)
    ids = [i for m in with_files for i in m.attachment_ids]
    found = {str(a.pk): a async for a in Attachment.objects.filter(pk__in=ids)}
    contents = {}
    for message in with_files:
        attachments = [found[i] for i in message.attachment_ids if i in found]
        check_images(attachments, slot)
        contents[message.pk] = await asyncio.to_thread(_content, message, attachments, slot)
    return selectors.history_for_upstream(thread, contents=contents)


def _content(message: Message, attachments: list[Attachment], slot: Slot) -> str | list[Any]:
    budget = slot.document_tokens * CHARS_PER_TOKEN
    texts = []
    for document in (a for a in attachments if a.kind == Attachment.Kind.DOCUMENT):
        text = document.text[: max(budget, 0)]
        budget -= len(text)
        note = (
            f"\n[Cut here: only the first {tokens_of(text)} tokens of this document are included.]"
            if len(text) < len(document.text)
            else ""
        )
        texts.append(f'Attached document "{document.name}":\n\n{text}{note}')
    text = "\n\n".join([*texts, message.content])
    images = [a for a in attachments if a.kind == Attachment.Kind.IMAGE]
    if not images:
        return text
    return [
        {"type": "text", "text": text},
        *({"type": "image_url", "image_url": {"url": _image_url(a, slot)}} for a in images),
    ]


def _image_url(image: Attachment, slot: Slot) -> str:
    """The ``image_url`` a slot gets: a base64 ``data:`` URL, or with ``slot.image_links`` (and
    ``SLIPSTREAM_PUBLIC_URL`` set) a signed link to Slipstream that works for
    ``SLIPSTREAM_IMAGE_LINK_TTL_S``, for servers that fetch images themselves."""
    public: str = settings.SLIPSTREAM_PUBLIC_URL.rstrip("/")
    if slot.image_links and public:
        return public + image_link_path(image, slot)
    if slot.image_links:
        logger.warning("slot %s sends image links, but SLIPSTREAM_PUBLIC_URL is not set", slot)
    data, mime = image_bytes(image, side=slot.image_max_side)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_bytes(image: Attachment, *, side: int) -> tuple[bytes, str]:
    """The stored image, downscaled again when its longer side is over ``side``:
    ``(bytes, mime)``."""
    with image.file.open("rb") as f:
        data = f.read()
    if max(image.width or 0, image.height or 0) > side:
        data, mime, _, _ = _reencode(data, side)
        return data, mime
    return data, image.mime


async def for_visitor(thread: list[Message], *, slot: Slot) -> dict[int, list[dict[str, Any]]]:
    """A widget visitor's images in ``thread``, by message id, described as ``describe`` does
    but with ``url`` a signed link (``image_link_path``): the files' own address is for
    signed-in owners, and a visitor has no session. No query when nothing is attached."""
    ids = [i for m in thread for i in m.attachment_ids]
    if not ids:
        return {}
    found = {str(a.pk): a async for a in Attachment.objects.filter(pk__in=ids)}
    return {
        m.pk: [
            {
                **describe(a),
                "url": image_link_path(a, slot),
            }
            for i in m.attachment_ids
            if (a := found.get(i)) is not None and a.kind == Attachment.Kind.IMAGE
        ]
        for m in thread
        if m.attachment_ids
    }


def image_link_path(image: Attachment, slot: Slot) -> str:
    """The path of a signed, timestamped link to ``image`` at ``slot``'s side
    (``image_from_link`` reads its token)."""
    token = signing.dumps({"a": image.pk.hex, "s": slot.image_max_side}, salt=LINK_SALT)
    return reverse("chat:attachment-link", args=[token])


def image_from_link(token: str) -> tuple[Attachment, int] | None:
    """The image and side a link's token names, or None: tampered with, older than
    ``SLIPSTREAM_IMAGE_LINK_TTL_S``, or its image deleted since."""
    try:
        claims = signing.loads(token, salt=LINK_SALT, max_age=settings.SLIPSTREAM_IMAGE_LINK_TTL_S)
        image = Attachment.objects.filter(pk=claims["a"], kind=Attachment.Kind.IMAGE).first()
        return (image, int(claims["s"])) if image is not None else None
    except (signing.BadSignature, KeyError, TypeError, ValueError, ValidationError):
        return None


async def purge_unsent(*, older_than: timedelta = UNSENT_KEPT) -> int:
    """Delete the uploads never sent with a message (no conversation) that are older than
    ``older_than``, their files too; they counted against their owner's quota meanwhile.
    Returns how many were deleted."""
    stale = Attachment.objects.filter(conversation=None, created_at__lt=timezone.now() - older_than)
    names = [name async for name in stale.values_list("file", flat=True) if name]
    deleted, _ = await stale.adelete()
    if names:
        await asyncio.to_thread(services.attachment_files_delete, names)
    return deleted
