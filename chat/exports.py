"""A conversation's shown thread as a download: Markdown or JSON."""

from __future__ import annotations

from typing import Any

from chat.models import Conversation, Message


def as_json(*, conversation: Conversation, thread: list[Message]) -> dict[str, Any]:
    """The shown thread as JSON: title, timestamps, and each message with its role, content,
    reasoning, tool calls, status, slot, usage and timing."""
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
            }
            for m in thread
        ],
    }


def as_markdown(*, conversation: Conversation, thread: list[Message]) -> str:
    """The shown thread as Markdown: a heading per turn, reasoning as a quote, tool calls as
    JSON blocks."""
    lines = [f"# {conversation}", ""]
    for m in thread:
        who = "You" if m.role == Message.Role.USER else (m.slot_name or m.role.title())
        lines += [f"## {who}", ""]
        if m.reasoning:
            quoted = [f"> {line}" for line in m.reasoning.splitlines()]
            lines += ["> **Thinking**", ">", *quoted, ""]
        if m.content:
            lines += [m.content, ""]
        for call in m.tool_calls or ():
            function = call.get("function", {}) if isinstance(call, dict) else {}
            lines += [f"Tool call `{function.get('name', '?')}`:", "", "```json"]
            lines += [str(function.get("arguments", "")), "```", ""]
        if m.status not in (Message.Status.COMPLETE, Message.Status.STREAMING):
            lines += [f"*({m.status})*", ""]
    return "\n".join(lines).rstrip() + "\n"
