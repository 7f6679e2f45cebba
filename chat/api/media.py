"""Media in ``/v1`` requests: images and files in content parts, checked against the slot (does
its model read images?), the media limits, and the slot's URL policy for remote URLs
(``chat.media_urls``: resolves host names, so not pure like ``validation``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from chat import media_urls
from chat.http import invalid
from chat.models import Slot

# Content parts of the Responses API that are text (the rest count against the media limits).
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


def check_media(media: list[tuple[str, dict[str, Any]]]) -> None:
    """Content parts other than text pass through unchanged (a remote ``image_url`` is only
    forwarded, never fetched here), within ``SLIPSTREAM_API_MAX_PARTS`` per request (400) and
    ``SLIPSTREAM_API_MAX_PART_BYTES`` each (413), counted on the inline data as sent."""
    if len(media) > settings.SLIPSTREAM_API_MAX_PARTS:
        raise invalid(
            f"Too many content parts other than text: {len(media)}; at most "
            f"{settings.SLIPSTREAM_API_MAX_PARTS} per request.",
            param=media[settings.SLIPSTREAM_API_MAX_PARTS][0],
            code="too_many_parts",
        )
    for param, part in media:
        size = _part_bytes(part)
        if size > settings.SLIPSTREAM_API_MAX_PART_BYTES:
            raise invalid(
                f"Content part '{param}' is {size:,} bytes; at most "
                f"{settings.SLIPSTREAM_API_MAX_PART_BYTES:,} bytes each.",
                param=param,
                code="part_too_large",
                status=413,
            )


def _part_bytes(part: dict[str, Any]) -> int:
    """The bytes of a content part's inline data: chat's ``image_url.url``, ``input_audio.data``
    and ``file.file_data`` (``ChatCompletionRequestMessageContentPart*``); the Responses API's
    ``image_url`` of an ``input_image`` and ``file_data`` of an ``input_file``
    (``InputContent``)."""
    nested = part.get(str(part.get("type")))
    if isinstance(nested, str):
        return len(nested)
    fields = nested if isinstance(nested, dict) else part
    data = (fields.get("url") or fields.get("image_url") or fields.get("data")) or fields.get(
        "file_data"
    )
    return len(data) if isinstance(data, str) else 0


# Content parts that are images, in chat completions and in the Responses API.
_IMAGE_PARTS = ("image_url", "input_image")


def has_images(body: dict[str, Any]) -> bool:
    """Whether a request's ``messages`` (chat) or ``input`` items (Responses) carry an image
    part."""
    items = body.get("messages") or body.get("input")
    return any(
        isinstance(part, dict) and part.get("type") in _IMAGE_PARTS
        for item in (items if isinstance(items, list) else ())
        if isinstance(item, dict) and isinstance(item.get("content"), list)
        for part in item["content"]
    )


def refuse_images(slot: Slot, body: dict[str, Any], *, param: str) -> None:
    """``Refusal`` 400 ``images_not_supported`` when ``body`` has an image and ``slot`` does not
    accept images (its admin checkbox), before any call upstream."""
    if not slot.accepts_images and has_images(body):
        raise invalid(
            f"The model '{slot.name}' does not accept images.",
            param=param,
            code="images_not_supported",
        )


# A content part's fields that hold a URL: chat's ``image_url.url`` (and vLLM's ``video_url``
# and ``audio_url`` parts), the Responses API's ``image_url`` and ``file_url``; and those that
# hold inline data, checked only when their value is a URL (chat's ``file.file_data`` and
# ``input_audio.data``, the Responses API's ``file_data``).
_URL_FIELDS = ("url", "image_url", "file_url")


_DATA_FIELDS = ("file_data", "data")


async def refuse_media_urls(slot: Slot, body: dict[str, Any]) -> None:
    """``Refusal`` 400 for the first URL in ``body``'s content parts that ``slot``'s
    ``media_urls`` policy keeps from the upstream (``chat.media_urls``), naming the field:
    ``invalid_image_url``, ``invalid_file_url`` or ``invalid_url``."""
    allow_hosts = settings.SLIPSTREAM_MEDIA_URL_ALLOW_HOSTS
    for at, part in _media_parts(body):
        for param, url in _part_urls(at, part):
            reason = await media_urls.refusal(url, policy=slot.media_urls, allow_hosts=allow_hosts)
            if reason is None:
                continue
            kind = part.get("type")
            code = "invalid_url"
            if kind in _IMAGE_PARTS:
                code = "invalid_image_url"
            elif kind in ("file", "input_file"):
                code = "invalid_file_url"
            raise invalid(f"Invalid '{param}': {reason}.", param=param, code=code)


def _media_parts(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(param, part)`` of the content parts other than text in chat's ``messages`` or the
    Responses API's ``input`` items: their ``content``, and a tool output's ``output`` (an
    array of input parts, or a ``computer_screenshot``)."""
    key = "messages" if "messages" in body else "input"
    items = body.get(key)
    found: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(items if isinstance(items, list) else ()):
        for name in ("content", "output") if isinstance(item, dict) else ():
            value = item.get(name)
            if isinstance(value, dict):
                found.append((f"{key}[{i}].{name}", value))
            for j, part in enumerate(value if isinstance(value, list) else ()):
                if isinstance(part, dict) and part.get("type") not in ("text", *TEXT_PARTS):
                    found.append((f"{key}[{i}].{name}[{j}]", part))
    return found


def _part_urls(at: str, part: dict[str, Any]) -> list[tuple[str, str]]:
    """``(param, url)`` of the URLs in a content part (``at``: its param), in its object named
    after its type (chat's ``{"type": "image_url", "image_url": {"url": …}}``) or in itself."""
    nested = part.get(str(part.get("type")))
    fields, where = (nested, f"{at}.{part['type']}") if isinstance(nested, dict) else (part, at)
    return [
        (f"{where}.{name}", value)
        for name in (*_URL_FIELDS, *_DATA_FIELDS)
        if isinstance(value := fields.get(name), str)
        and (name in _URL_FIELDS or media_urls.is_url(value))
    ]
