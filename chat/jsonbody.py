"""The one JSON reader for request bodies: the chat's and the widget's stream endpoints and
``/v1`` all parse through it, so every one of them refuses the same inputs the same way.

Python's ``json`` is lenient where the rest of the stack is not. It accepts ``NaN``,
``Infinity`` and ``-Infinity`` (not JSON: RFC 8259 §6) and reads ``1e400`` as ``inf``, none of
which httpx will send upstream (it encodes with ``allow_nan=False``) nor PostgreSQL's ``jsonb``
store; it keeps a lone surrogate such as ``"\\ud800"`` (RFC 8259 §8.2 leaves it undefined),
which cannot be encoded as UTF-8 when the value is sent upstream or stored; it keeps
``"\\u0000"``, which a PostgreSQL text column cannot store; and it recurses once per nesting
level, raising ``RecursionError`` near 1,000 levels. Each of these was a 500 (issue 12); here it
is a 400 naming where it was found. A body labelled as anything but JSON (a form, an upload)
is refused before it is read, in OpenAI's words (``check_content_type``, issue 33).

Errors are ``chat.http.invalid``'s (``invalid_request_error``), shown as OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``; ``param`` is the path to the bad value
(``messages[0].content``) when there is one.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from chat.http import invalid
from chat.relay.errors import EnvelopeError

# Deep enough for any real request (a tool's JSON schema nests a handful of levels), shallow
# enough that nothing downstream (validation, json.dumps, the ORM's JSON fields) recurses far.
MAX_DEPTH = 64
# Integers past a signed 64-bit value have no use in an OpenAI request (seeds are int64), fit
# no database integer column, and make int() quadratic at thousands of digits.
MAX_INT = 2**63 - 1

NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent "
    "was not valid JSON.)"
)

# A string literal (escapes included) or one bracket: enough to count nesting outside strings.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
# Surrogate code points survive json.loads only unpaired (a valid pair becomes one code point).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class _BadNumber:
    """Stands in for a number that has no JSON or no sane value, so the walk after parsing can
    report where it was (the parser's hooks do not know the path)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _BadNumber:
    # Length first: int() of a 5,000-digit string raises ValueError (and is slow before that).
    if len(text) > 20:
        return _BadNumber(text)
    value = int(text)
    return value if -MAX_INT - 1 <= value <= MAX_INT else _BadNumber(text)


def _parse_float(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text)


def _too_deep(text: str) -> bool:
    """Whether brackets outside string literals nest deeper than ``MAX_DEPTH``. Invalid JSON
    may be miscounted; json.loads refuses it anyway."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False  # cannot nest deeper than it has brackets: most bodies stop here
    depth = 0
    for match in _TOKENS.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _path(parts: list[str | int]) -> str:
    """``["messages", 0, "content"]`` → ``messages[0].content``, cut to 200 characters (keys
    are the client's and may be long)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out if len(out) <= 200 else out[:199] + "…"


def _find_bad(value: Any, path: list[str | int]) -> EnvelopeError | None:
    """The error for the first unacceptable number or string under ``value``, depth first.
    Recursion is bounded: ``_too_deep`` refused anything deeper than ``MAX_DEPTH``."""
    if isinstance(value, str):
        bad = _UNSTORABLE.search(value)
        if bad is None:
            return None
        return _bad_string(_path(path), bad.group(), key=False)
    if isinstance(value, dict):
        return _find_bad_in_object(value, path)
    if isinstance(value, list):
        return _find_bad_in_array(value, path)
    if isinstance(value, _BadNumber):
        return _bad_number(_path(path), value.text)
    return None


def _find_bad_in_object(value: dict[str, Any], path: list[str | int]) -> EnvelopeError | None:
    """``_find_bad`` for an object: each key, then its value, in order."""
    for key, item in value.items():
        bad_key = _UNSTORABLE.search(key)
        if bad_key is not None:  # named by its object: the key itself cannot be shown
            return _bad_string(_path(path), bad_key.group(), key=True)
        path.append(key)
        error = _find_bad(item, path)
        if error is not None:
            return error
        path.pop()
    return None


def _find_bad_in_array(value: list[Any], path: list[str | int]) -> EnvelopeError | None:
    """``_find_bad`` for an array: each item, in order."""
    for index, item in enumerate(value):
        path.append(index)
        error = _find_bad(item, path)
        if error is not None:
            return error
        path.pop()
    return None


def _bad_number(where: str, text: str) -> EnvelopeError:
    return invalid(
        f"Invalid value for '{where or 'body'}': {text[:40]} is not a number JSON can "
        "carry (NaN and Infinity are not JSON, RFC 8259 §6; numbers must be finite and "
        f"integers within ±{MAX_INT}).",
        param=where or None,
        code="invalid_value",
    )


def _bad_string(where: str, char: str, *, key: bool) -> EnvelopeError:
    what = "NUL character (\\u0000)" if char == "\x00" else f"lone surrogate (\\u{ord(char):04x})"
    return invalid(
        f"Invalid {'key in' if key else 'value for'} '{where or 'body'}': a string contains a "
        f"{what}, which is not text that can be stored or sent on.",
        param=where or None,
        code="invalid_value",
    )


def loads(raw: bytes | str) -> Any:
    """``raw`` (UTF-8 bytes or text) as a JSON value, strictly: RFC 8259 JSON with finite
    numbers, integers within ±``MAX_INT``, strings of Unicode text without NUL, at most
    ``MAX_DEPTH`` levels of arrays and objects. Raises ``invalid``'s error, 400, otherwise."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise invalid(NOT_JSON + " The body is not UTF-8.") from exc
    if _too_deep(text):
        raise invalid(
            f"The JSON body of your request nests arrays and objects more than {MAX_DEPTH} "
            "levels deep.",
            code="invalid_json",
        )
    try:
        value = json.loads(
            text, parse_constant=_BadNumber, parse_float=_parse_float, parse_int=_parse_int
        )
    except ValueError as exc:
        raise invalid(NOT_JSON) from exc
    error = _find_bad(value, [])
    if error is not None:
        raise error
    return value


def loads_object(raw: bytes | str) -> dict[str, Any]:
    """``loads``, and the value must be an object. Raises ``invalid``'s error, 400."""
    value = loads(raw)
    if not isinstance(value, dict):
        raise invalid("The request body must be a JSON object.")
    return value


def check_content_type(value: str | None) -> None:
    """Refuse a body whose ``Content-Type`` (the header's value) is not JSON: ``application/json``
    or ``application/<something>+json`` (RFC 6839 §3.1), any parameters, any case. A missing or
    empty header passes: clients that send a raw body without one (httpx's ``content=``) meant
    JSON. Raises ``invalid``'s error otherwise: 400, OpenAI's wording and
    ``unsupported_content_type`` code (its answer to a ``multipart/form-data`` body on a JSON
    endpoint, openai/openai-openapi#502); a multipart upload or a form is never parsed here."""
    text = value or ""
    media = text.split(";", 1)[0].strip().lower()
    if not media or media == "application/json":
        return
    if media.startswith("application/") and media.endswith("+json"):
        return
    shown = text if len(text) <= 200 else text[:199] + "…"  # the client's, maybe long
    raise invalid(
        f"Unsupported content type: '{shown}'. This API method only accepts 'application/json' "
        f"requests, but you specified the header 'Content-Type: {shown}'. Please try again "
        "with a supported content type.",
        code="unsupported_content_type",
    )


def too_large(limit: int | None) -> EnvelopeError:
    """The 413 for a body over ``limit`` bytes."""
    return invalid(
        f"Request body is over the limit of {limit} bytes.", status=413, code="request_too_large"
    )


def read_object(request: HttpRequest, *, max_bytes: int | None = None) -> dict[str, Any]:
    """The request's body as a JSON object (``loads_object``). Raises ``invalid``'s error: 400
    for a ``Content-Type`` that is not JSON (``check_content_type``), before the body is read;
    413 when the body is over ``max_bytes`` (default: Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``),
    judged by ``Content-Length`` before reading; 400 for a bad ``Content-Length`` or body."""
    check_content_type(request.headers.get("Content-Type"))
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE if max_bytes is None else max_bytes
    too_big = too_large(limit)
    try:
        if limit is not None and int(request.headers.get("Content-Length") or 0) > limit:
            raise too_big
        raw = request.body
    except RequestDataTooBig as exc:
        raise too_big from exc
    except ValueError as exc:
        raise invalid("Invalid Content-Length header.") from exc
    if limit is not None and len(raw) > limit:
        raise too_big
    return loads_object(raw)
