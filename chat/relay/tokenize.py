"""A prompt's tokens, counted before the call: by the backend's own tokenizer where it has one,
else estimated. For admission under token budgets (``chat.quotas``): a request whose prompt
alone does not fit is refused, and the answer's output limit is what is left after it.

Where a server says (one request, one body for both dialects, ``/tokenize`` at the server's
root, beside ``/v1``):

- llama.cpp's server: ``POST /tokenize {"content": str}`` → ``{"tokens": [int, …]}``
  (tools/server/README.md, "POST /tokenize"); the chat template's tokens are not in it, so
  ``MESSAGE_TOKENS`` per message are added.
- vLLM: ``POST /tokenize {"model", "messages"}`` (or ``{"model", "prompt"}``) →
  ``{"count": int, "max_model_len": int, "tokens": [int, …]}`` (vLLM's OpenAI server,
  "Tokenizer API"); with ``messages`` its count has the chat template applied: exact.
- llama-cpp-python's server (no ``/tokenize``): ``POST /extras/tokenize/count {"input": str}``
  → ``{"count": int}``, the text alone, asked when ``/tokenize`` is absent.

Each ignores the others' fields. The call uses the backend's URL and key but a client of its own
(not the dispatcher's slots: admission must not queue behind answers), bounded by
``TOKENIZE_TIMEOUT_S``. A server that answers 404, 405 or 501 has no tokenizer endpoint: that is
remembered per server for this process, and it is not asked again. Slow, failed or odd answers
fall back to ``estimate`` for that request only.

The estimate: UTF-8 bytes / ``BYTES_PER_TOKEN`` rounded up (about 4 bytes per token for English
text with BPE vocabularies of 32k-150k entries; more tokens per byte for other scripts and for
code, so it tends to over-count those, never badly under), plus ``MESSAGE_TOKENS`` per message
(chat templates' role markers: 3-5 tokens in Llama 3's, ChatML's and OpenAI's own counting
guide); images, whose count depends on the model's vision encoder, ``IMAGE_TOKENS`` each; token
ids given as such (a legacy completion's prompt) count one each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chat.relay.errors import RelayError
from chat.relay.types import BackendConfig
from chat.relay.upstream import request_json

logger = logging.getLogger(__name__)

# How long admission waits for a server's count (s): past it, the estimate.
TOKENIZE_TIMEOUT_S = 0.5
BYTES_PER_TOKEN = 4
# Per message: its role and the template's markers around it.
MESSAGE_TOKENS = 4
# Per image: OpenAI's count for a 1024x1024 image at "high" detail is 765; llama.cpp's and vLLM's
# vision encoders take 256-1,000+ for one.
IMAGE_TOKENS = 768
# Answers that say a server has no such endpoint.
_ABSENT = frozenset({404, 405, 501})

# Fields of a Responses input item that are not sent to the model as text.
_NOT_TEXT = frozenset({"type", "id", "status", "call_id"})
# Where a server may count tokens, in the order asked.
PATHS = ("/tokenize", "/extras/tokenize/count")

# Servers (their root URL) found without any of ``PATHS``, in this process; and those found with
# one: the path that answered.
_absent: set[str] = set()
_found: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a request sends as its prompt, as the counting needs it: ``messages`` (chat
    messages with text content only: ``{"role", "content": str}``), or ``text`` for a prompt
    without messages; ``images`` counted apart; ``token_ids`` given as such."""

    messages: list[dict[str, str]] = field(default_factory=list)
    text: str = ""
    images: int = 0
    token_ids: int = 0

    def joined(self) -> str:
        """The text to tokenize: every message's text, one per line, or ``text``."""
        if self.messages:
            return "\n".join(m["content"] for m in self.messages)
        return self.text


def chat_prompt(messages: Iterable[Any]) -> Prompt:
    """The prompt of a chat completion's ``messages`` (OpenAI's: ``content`` a string or a list
    of parts; ``text`` parts counted, ``image_url`` parts as images; a tool call's name and
    arguments as text)."""
    plain: list[dict[str, str]] = []
    images = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        texts, seen = _texts(message.get("content"))
        images += seen
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
        role = message.get("role")
        plain.append(
            {"role": role if isinstance(role, str) else "user", "content": "\n".join(texts)}
        )
    return Prompt(messages=plain, images=images)


def completion_prompt(prompt: Any) -> Prompt:
    """The prompt of a legacy completion: a string, strings, token ids or lists of them."""
    if isinstance(prompt, str):
        return Prompt(text=prompt)
    texts: list[str] = []
    ids = 0
    for item in prompt if isinstance(prompt, list) else ():
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, int):
            ids += 1
        elif isinstance(item, list):
            ids += len(item)
    return Prompt(text="\n".join(texts), token_ids=ids)


def responses_prompt(body: dict[str, Any], *, history: Iterable[dict[str, Any]] = ()) -> Prompt:
    """The prompt of a Responses API request: its ``instructions``, the ``history`` items (a
    ``previous_response_id`` chain's), then its ``input`` (a string, or items: messages with
    content parts, function calls and their outputs, reasoning)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given or []
    for item in [*history, *items]:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": item.get("content")})
        else:
            # Function calls, their outputs, reasoning: whatever text they carry.
            texts = [
                str(v) for k, v in item.items() if k not in ("type", "id", "status", "call_id")
            ]
            messages.append({"role": "user", "content": "\n".join(texts)})
    return chat_prompt(messages)


def estimate(prompt: Prompt) -> int:
    """``prompt``'s tokens as estimated (see the module): never below 1 per message."""
    text_tokens = math.ceil(len(prompt.joined().encode("utf-8")) / BYTES_PER_TOKEN)
    return _overheads(prompt) + text_tokens


def _overheads(prompt: Prompt) -> int:
    return MESSAGE_TOKENS * len(prompt.messages) + IMAGE_TOKENS * prompt.images + prompt.token_ids


async def count(
    backend: BackendConfig, model: str, prompt: Prompt, *, timeout_s: float = TOKENIZE_TIMEOUT_S
) -> tuple[int, str]:
    """``prompt``'s tokens on ``backend`` (``model``: its name there): ``(tokens, how)``,
    ``how`` being ``"tokenize"`` (the server counted the text) or ``"estimate"``. Waits at
    most ``timeout_s``; never raises (but for cancellation)."""
    root = backend.base_url.rstrip("/").removesuffix("/v1")
    text = prompt.joined()
    if root in _absent or not text:
        return estimate(prompt), "estimate"
    probe = dataclasses.replace(
        backend,
        base_url=root,
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        total_timeout_s=timeout_s,
    )
    body: dict[str, Any] = {"model": model, "content": text, "input": text, "add_special": True}
    if prompt.messages:
        body["messages"] = prompt.messages
    else:
        body["prompt"] = text
    try:
        async with asyncio.timeout(timeout_s):
            answer = await _ask(probe, root, body)
    except TimeoutError:
        logger.info("tokenize at %s: no answer in %.1f s; estimated", root, timeout_s)
        return estimate(prompt), "estimate"
    except RelayError as exc:
        logger.info("tokenize at %s failed (%s); estimated", root, exc.message)
        return estimate(prompt), "estimate"
    if answer is None:
        logger.info("tokenize at %s: none there; estimated from now on", root)
        return estimate(prompt), "estimate"
    counted = _counted(answer)
    if counted is None:
        logger.info("tokenize at %s: unexpected answer %.200s; estimated", root, json.dumps(answer))
        return estimate(prompt), "estimate"
    # vLLM counted the messages with their template; llama.cpp's server the text alone.
    exact = isinstance(answer, dict) and "max_model_len" in answer and bool(prompt.messages)
    extra = _overheads(prompt) - (MESSAGE_TOKENS * len(prompt.messages) if exact else 0)
    return counted + extra, "tokenize"


async def _ask(probe: BackendConfig, root: str, body: dict[str, Any]) -> Any:
    """The answer of the first of ``PATHS`` the server has (the one found before, if any), or
    None when it has none (remembered). Raises ``RelayError`` for other failures."""
    known = _found.get(root)
    for path in (known,) if known else PATHS:
        try:
            answer = await request_json(probe, "POST", path, body)
        except RelayError as exc:
            if known:
                _found.pop(root, None)  # changed since: look again next time
            if exc.upstream_status not in _ABSENT or known:
                raise
            continue
        _found[root] = path
        return answer
    _absent.add(root)
    return None


def _counted(answer: Any) -> int | None:
    """The token count in a ``/tokenize`` answer (``count``, else ``tokens``' length), or
    None for another shape."""
    if not isinstance(answer, dict):
        return None
    counted = answer.get("count")
    if isinstance(counted, int) and not isinstance(counted, bool):
        return counted
    tokens = answer.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


def forget_absent() -> None:
    """Ask every server again (tests; a server upgraded in place is noticed on restart)."""
    _absent.clear()
    _found.clear()


def _texts(content: Any) -> tuple[list[str], int]:
    """The text parts of a message's ``content`` and its count of images."""
    if isinstance(content, str):
        return [content], 0
    texts: list[str] = []
    images = 0
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("image_url", "input_image", "image"):
            images += 1
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
    return texts, images


def counter(
    backend: BackendConfig, model: str, build: Callable[[], Prompt]
) -> Callable[[], Awaitable[int]]:
    """``count`` as admission takes it (``chat.quotas.admit``'s ``prompt``): the prompt built
    by ``build()`` and counted only when called, that is only when a token budget applies."""

    async def counted() -> int:
        return (await count(backend, model, build()))[0]

    return counted
