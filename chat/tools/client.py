"""One MCP session per operation: list a server's tools, call one tool (issue 31).

Through the official ``mcp`` SDK (``mcp.Client``): Streamable HTTP (``streamable_http_client``
over an ``httpx2.AsyncClient`` we configure) or stdio (``stdio_client``). Each operation
connects, negotiates the protocol (``server/discover``, else the ``initialize`` handshake), does
its one job and closes, all within one deadline; nothing is kept open between calls, so a
server's crash or restart costs one failed call, not a wedged pool.

Failures are told apart, as ``McpError`` subclasses whose messages name the server's label and
never its secret, headers or URL query (a server's own error text is scrubbed of them too):
``McpRefusedUrl`` (the URL policy, ``chat.tools.urls``), ``McpNotConfigured`` (a stdio server
missing from ``SLIPSTREAM_MCP_STDIO_SERVERS``), ``McpUnreachable`` (refused, unresolvable,
program not found), ``McpTimeout``, ``McpProtocolError`` (an HTTP error status, a reply that is
not MCP) and ``McpToolError`` (the server answered ``tools/call`` with a JSON-RPC error: unknown
tool, invalid arguments). A tool that ran and failed is not an exception: its result has
``is_error`` set (MCP's ``CallToolResult.isError``), for the model to read.

Stdio servers start from ``env -i``: the configured variables and PATH only, none of
Slipstream's own (its secret key, database URL, API keys), and never through a shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx2
import mcp_types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from chat.tools import config, urls

logger = logging.getLogger(__name__)
# One line per tool call, for the audit trail: who, which server and tool, how long, outcome.
audit_logger = logging.getLogger("chat.tools.audit")

HTTP = "http"
STDIO = "stdio"
# A tools/list walk stops after this many pages: a server whose cursor never ends cannot hang
# a refresh (the SDK's own re-list uses the same cap).
MAX_PAGES = 100


class McpError(Exception):
    """An MCP operation that failed; ``str()`` is a sentence safe to show staff and users."""

    outcome = "error"


class McpRefusedUrl(McpError):
    """The server's URL (or a redirect's) is refused by the URL policy."""

    outcome = "refused_url"


class McpNotConfigured(McpError):
    """A stdio server not in SLIPSTREAM_MCP_STDIO_SERVERS, or that setting cannot be read."""

    outcome = "not_configured"


class McpUnreachable(McpError):
    """No connection: refused, reset, unresolvable host, or a program that cannot start."""

    outcome = "unreachable"


class McpTimeout(McpError):
    """The operation did not finish within its deadline (connecting included)."""

    outcome = "timeout"


class McpProtocolError(McpError):
    """The server answered, but not as an MCP server: an HTTP error status, a malformed
    message, a failed handshake, or a JSON-RPC error to anything but ``tools/call``."""

    outcome = "protocol_error"


class McpToolError(McpError):
    """The server answered ``tools/call`` with a JSON-RPC error (unknown tool, invalid
    arguments), not with a result."""

    outcome = "tool_error"


@dataclass(frozen=True)
class ServerSpec:
    """What connecting to one MCP server needs: ORM-free, its secret decrypted (built by
    ``McpServer.spec()``). ``headers`` are sent with every HTTP request; ``secret``, when set,
    as ``Authorization: Bearer <secret>``. ``stdio`` is the configured command of a stdio
    server. ``timeout_s``: the default deadline of one operation, in seconds.
    ``allow_hosts``: ``SLIPSTREAM_MCP_ALLOW_HOSTS``, the hosts that skip the address check."""

    label: str
    transport: str
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    secret: str = field(default="", repr=False)
    stdio: config.StdioCommand | None = None
    timeout_s: float = 30.0
    allow_hosts: tuple[str, ...] = ()

    def redactions(self) -> list[str]:
        """The strings no message may contain: the secret, header values, the URL's query."""
        found = [self.secret, *self.headers.values()]
        try:
            parts = urlsplit(self.url)
            found += [parts.query, parts.password or ""]
        except ValueError:
            pass
        return [s for s in found if len(s) >= 4]


class SpecSource(Protocol):
    """Anything with a ``label`` and a ``spec()``: ``chat.models.McpServer`` (named here by its
    shape, so that this module imports nothing of the models)."""

    label: str

    def spec(self) -> ServerSpec: ...


@dataclass(frozen=True)
class ToolInfo:
    """One tool as ``tools/list`` describes it: its ``name``, ``description`` (plain text from
    the server: data, never HTML) and ``input_schema`` (a JSON Schema object)."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """A ``tools/call`` result as text for the model. ``text``: the text blocks joined with
    newlines, other blocks described (``[image: image/png, 1,234 bytes]``), the structured
    content as JSON when there is no text, cut to the budget; ``is_error``: the tool ran and
    failed (MCP's ``isError``); ``duration_ms``: the whole operation, connecting included;
    ``truncated``: whether characters were cut."""

    text: str
    is_error: bool
    duration_ms: int
    truncated: bool = False


def _spec(server: ServerSpec | SpecSource) -> ServerSpec:
    return server if isinstance(server, ServerSpec) else server.spec()


async def list_tools(
    server: ServerSpec | SpecSource, *, timeout_s: float | None = None
) -> list[ToolInfo]:
    """Every tool ``server`` offers, all pages of ``tools/list`` (at most ``MAX_PAGES``), in
    the server's order. Connects, negotiates, lists and closes within ``timeout_s`` seconds
    (default: the server's). Raises an ``McpError`` subclass."""
    spec = _spec(server)
    deadline = timeout_s if timeout_s is not None else spec.timeout_s
    tools: list[ToolInfo] = []
    async with _failures(spec, deadline, listing=True), _session(spec, deadline) as client:
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            tools += [
                ToolInfo(t.name, t.description or "", dict(t.input_schema)) for t in page.tools
            ]
            cursor = page.next_cursor
            if not cursor:
                break
    return tools


async def call_tool(
    server: ServerSpec | SpecSource,
    name: str,
    arguments: Mapping[str, Any] | None,
    *,
    timeout_s: float | None = None,
    user: Any = None,
    max_chars: int | None = None,
) -> ToolResult:
    """Call tool ``name`` of ``server`` with ``arguments`` (a JSON object) as ``user`` (a
    Django user, or None for the system), within ``timeout_s`` seconds (default: the
    server's), and return its result as text cut to ``max_chars`` (default:
    ``SLIPSTREAM_MCP_RESULT_MAX_CHARS``). One audit line is logged per call, success or not,
    with the user's id and username, server, tool, duration and outcome; never the arguments.
    Raises an ``McpError`` subclass."""
    started = time.monotonic()
    outcome = "error"  # until known: an unexpected exception is logged as one
    try:
        spec = _spec(server)
        deadline = timeout_s if timeout_s is not None else spec.timeout_s
        budget = max_chars if max_chars is not None else _setting("SLIPSTREAM_MCP_RESULT_MAX_CHARS")
        async with _failures(spec, deadline, listing=False), _session(spec, deadline) as client:
            result = await client.call_tool(name, dict(arguments or {}))
        text, truncated = _cut(_as_text(result), budget)
        result_error = bool(result.is_error)
        outcome = "tool_reported_error" if result_error else "ok"
        return ToolResult(text, result_error, _ms_since(started), truncated)
    except McpError as exc:
        outcome = exc.outcome
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        # The tool's name is the model's words (later, issue 31's loop): quoted, so it cannot
        # forge a line.
        audit_logger.info(
            "mcp tool call user_id=%s user=%s server=%s tool=%r duration_ms=%d outcome=%s",
            getattr(user, "pk", None),
            getattr(user, "username", "") or "-",
            server.label,
            name,
            _ms_since(started),
            outcome,
        )


@asynccontextmanager
async def _session(spec: ServerSpec, deadline: float) -> AsyncIterator[Client]:
    """An MCP client session with ``spec``'s server, negotiated; closed on exit."""
    if spec.transport == STDIO:
        transport: Any = stdio_client(_stdio_parameters(spec), errlog=sys.__stderr__ or sys.stderr)
        async with Client(transport, cache=None, read_timeout_seconds=deadline) as client:
            yield client
        return
    await _check_url(spec, spec.url)
    headers = dict(spec.headers)
    if spec.secret:
        headers["Authorization"] = f"Bearer {spec.secret}"

    refused: list[McpRefusedUrl] = []

    async def check_request(request: httpx2.Request) -> None:
        # Every request, redirects included (the SDK follows only same-origin ones): the name
        # is resolved again, as DNS may have changed since the last check.
        try:
            await _check_url(spec, str(request.url))
        except McpRefusedUrl as exc:
            refused.append(exc)
            raise

    http = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(deadline),
        follow_redirects=False,
        event_hooks={"request": [check_request]},
        trust_env=False,  # no proxy from the environment: the URL policy is about this hop
    )
    try:
        async with http:
            transport = streamable_http_client(spec.url, http_client=http)
            async with Client(transport, cache=None, read_timeout_seconds=deadline) as client:
                yield client
    except Exception:
        # The SDK turns a failed request into a JSON-RPC error: say it was the policy.
        if refused:
            raise refused[0] from None
        raise


async def _check_url(spec: ServerSpec, url: str) -> None:
    reason = await urls.refusal(url, allow_hosts=spec.allow_hosts)
    if reason:
        raise McpRefusedUrl(f"MCP server {spec.label}: refused to connect: {reason}")


def _stdio_parameters(spec: ServerSpec) -> StdioServerParameters:
    """``env -i PATH=… NAME=VALUE… argv``: the SDK merges its own defaults (HOME, USER, SHELL…)
    into a child's environment; env(1) clears them, without a shell in between."""
    if spec.stdio is None:
        raise McpNotConfigured(f"MCP server {spec.label}: no stdio command is configured")
    env_program = shutil.which("env") or "/usr/bin/env"
    variables = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **spec.stdio.env}
    return StdioServerParameters(
        command=env_program,
        args=["-i", *(f"{k}={v}" for k, v in variables.items()), *spec.stdio.command],
        env={},
    )


@asynccontextmanager
async def _failures(spec: ServerSpec, deadline: float, *, listing: bool) -> AsyncIterator[None]:
    """Runs the body within ``deadline`` seconds and turns what the SDK, httpx2, anyio and the
    OS raise into ``McpError`` subclasses with safe messages."""
    what = f"MCP server {spec.label}"
    try:
        async with asyncio.timeout(deadline):
            yield
    except McpError as exc:
        raise type(exc)(_scrub(str(exc), spec)) from None
    except TimeoutError:
        raise McpTimeout(f"{what} did not answer within {deadline:g} s") from None
    except BaseExceptionGroup as group:
        raise _classify(_first_leaf(group), spec, deadline, listing) from None
    except Exception as exc:  # every failure becomes one of ours
        raise _classify(exc, spec, deadline, listing) from None


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def _classify(exc: BaseException, spec: ServerSpec, deadline: float, listing: bool) -> McpError:
    what = f"MCP server {spec.label}"
    if isinstance(exc, McpError):
        return type(exc)(_scrub(str(exc), spec))
    if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
        return McpTimeout(f"{what} did not answer within {deadline:g} s")
    if isinstance(exc, httpx2.HTTPStatusError):
        return McpProtocolError(
            f"{what} answered HTTP {exc.response.status_code}; check its URL and credentials"
        )
    if isinstance(exc, MCPError):
        text = _scrub(exc.error.message, spec)
        if not listing:
            return McpToolError(f"{what} refused the call: {text} (code {exc.code})")
        return McpProtocolError(f"{what} answered with an error: {text} (code {exc.code})")
    if isinstance(exc, ValidationError):
        return McpProtocolError(f"{what} sent a reply that is not valid MCP")
    if isinstance(exc, (httpx2.HTTPError, OSError)):
        verb = "could not be started" if spec.transport == STDIO else "is unreachable"
        return McpUnreachable(f"{what} {verb}: {_reason(exc, spec)}")
    logger.warning("MCP server %s failed: %s", spec.label, type(exc).__name__)
    return McpProtocolError(f"{what} failed: {type(exc).__name__}: {_reason(exc, spec)}")


def _reason(exc: BaseException, spec: ServerSpec) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return _scrub(str(exc) or type(exc).__name__, spec)


def _scrub(text: str, spec: ServerSpec) -> str:
    for secret in spec.redactions():
        text = text.replace(secret, "[redacted]")
    return text


def _as_text(result: mcp_types.CallToolResult) -> str:
    """The result's blocks as text: text blocks as they are, the rest described (never
    decoded or run: images and audio are not shown to a text model)."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, (mcp_types.ImageContent, mcp_types.AudioContent)):
            size = len(block.data) * 3 // 4
            parts.append(f"[{block.type}: {block.mime_type}, {size:,} bytes]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link: {block.uri} ({block.name})]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                kind = resource.mime_type or "binary"
                parts.append(f"[resource: {resource.uri}, {kind}, {len(resource.blob):,} b64]")
        else:
            parts.append(f"[{getattr(block, 'type', 'unknown')} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _cut(text: str, budget: int) -> tuple[str, bool]:
    if len(text) <= budget:
        return text, False
    cut = len(text) - budget
    return f"{text[:budget]}\n[… {cut:,} more characters cut]", True


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _setting(name: str) -> int:
    from django.conf import settings

    return int(getattr(settings, name))
