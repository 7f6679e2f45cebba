"""A conversation's shown thread as a download: Markdown or JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chat.models import Attachment, Conversation, Message


def _files(
    message: Message, attachments: Mapping[str, Attachment], base_url: str
) -> list[dict[str, Any]]:
    """A message's attachments as references (the file stays behind its owner's sign-in)."""
    return [
        {
            "id": str(a.pk),
            "name": a.name,
            "kind": a.kind,
            "mime": a.mime,
            "size_bytes": a.size_bytes,
            "url": base_url + a.url,
        }
        for i in message.attachment_ids
        if (a := attachments.get(i)) is not None
    ]


def as_json(
    *,
    conversation: Conversation,
    thread: list[Message],
    attachments: Mapping[str, Attachment] | None = None,
    base_url: str = "",
) -> dict[str, Any]:
    """The shown thread as JSON: title, timestamps, and each message with its role, content,
    reasoning, tool calls, status, slot, usage and timing, and its attachments as references
    (``{"id", "name", "kind", "mime", "size_bytes", "url"}``; ``base_url`` before each URL)."""
    attachments = attachments or {}
    return {
        "id": str(conversation.pk),
        "title": str(conversation),
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "reasoning": m.reasoning,
                "tool_calls": m.tool_calls,
                "status": m.status,
                "slot": m.slot_name,
                "finish_reason": m.finish_reason,
                "usage": m.usage,
                "ttft_ms": m.ttft_ms,
                "tokens_per_s": m.tokens_per_s,
                "created_at": m.created_at.isoformat(),
                "attachments": _files(m, attachments, base_url),
            }
            for m in thread
        ],
    }


def as_markdown(
    *,
    conversation: Conversation,
    thread: list[Message],
    attachments: Mapping[str, Attachment] | None = None,
    base_url: str = "",
) -> str:
    """The shown thread as Markdown: a heading per turn, reasoning as a quote, tool calls as
    JSON blocks, attachments as links (images as Markdown images)."""
    attachments = attachments or {}
    lines = [f"# {conversation}", ""]
    for m in thread:
        who = "You" if m.role == Message.Role.USER else (m.slot_name or m.role.title())
        lines += [f"## {who}", ""]
        if m.reasoning:
            quoted = [f"> {line}" for line in m.reasoning.splitlines()]
            lines += ["> **Thinking**", ">", *quoted, ""]
        if m.content:
            lines += [m.content, ""]
        for file in _files(m, attachments, base_url):
            image = "!" if file["kind"] == Attachment.Kind.IMAGE else ""
            label = file["name"].replace("[", "\\[").replace("]", "\\]")
            lines += [f"{image}[{label}]({file['url']})", ""]
        for call in m.tool_calls or ():
            function = call.get("function", {}) if isinstance(call, dict) else {}
            lines += [f"Tool call `{function.get('name', '?')}`:", "", "```json"]
            lines += [str(function.get("arguments", "")), "```", ""]
        if m.status not in (Message.Status.COMPLETE, Message.Status.STREAMING):
            lines += [f"*({m.status})*", ""]
    return "\n".join(lines).rstrip() + "\n"
