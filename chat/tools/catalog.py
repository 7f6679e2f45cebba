"""A server's cached tool list: ``McpTool`` rows, refreshed from ``tools/list`` on demand.

A refresh keeps what staff decided: a known tool keeps its policy (its description and schema
follow the server); a new one starts at ``ask``; one the server no longer lists is marked
``gone``, not deleted, so its policy is there if it comes back. A failed refresh leaves the
rows as they were and stores the error's sentence in ``McpServer.last_error``.
"""

from __future__ import annotations

from dataclasses import dataclass

from asgiref.sync import async_to_sync
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from chat import crypto
from chat.models import McpServer, McpTool
from chat.tools import client


@dataclass(frozen=True)
class Refreshed:
    """What a successful refresh changed: tools ``added``, ``updated`` (still listed) and
    newly ``gone``."""

    added: int
    updated: int
    gone: int


def refresh(server: McpServer) -> Refreshed:
    """List ``server``'s tools (``client.list_tools``, on the event loop) and store them, from
    synchronous code (the admin). Raises the client's ``McpError`` (or
    ``crypto.SecretUnreadable``) after storing its message as the server's ``last_error``.
    Async callers use ``client.list_tools`` and then ``store``/``store_error`` off the loop."""
    try:
        tools = async_to_sync(client.list_tools)(server.spec())
    except (client.McpError, crypto.SecretUnreadable) as exc:
        store_error(server, str(exc))
        raise
    return store(server, tools)


def store_error(server: McpServer, message: str) -> None:
    """Keep ``message`` as ``server``'s ``last_error``; its tools stay as they were."""
    server.last_error = message
    McpServer.objects.filter(pk=server.pk).update(last_error=message)


def store(server: McpServer, tools: list[client.ToolInfo]) -> Refreshed:
    """Make ``server``'s ``McpTool`` rows match ``tools`` (one transaction), as the module's
    docstring says, and clear its ``last_error``."""
    with transaction.atomic():
        known = {t.name: t for t in McpTool.objects.select_for_update().filter(server=server)}
        added = updated = 0
        for info in tools:
            row = known.pop(info.name, None)
            if row is None:
                McpTool.objects.create(
                    server=server,
                    name=info.name,
                    description=info.description,
                    input_schema=info.input_schema,
                )
                added += 1
                continue
            row.description = info.description
            row.input_schema = info.input_schema
            row.gone = False
            row.save(update_fields=["description", "input_schema", "gone", "updated_at"])
            updated += 1
        vanished = [row.pk for row in known.values() if not row.gone]
        McpTool.objects.filter(pk__in=vanished).update(gone=True, updated_at=timezone.now())
        server.tools_fetched_at = timezone.now()
        server.last_error = ""
        server.save(update_fields=["tools_fetched_at", "last_error"])
    return Refreshed(added=added, updated=updated, gone=len(vanished))


def server_list_usable(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[McpServer]:
    """Enabled MCP servers ``user`` may use: those limited to groups are for those groups'
    members, as slots are (``selectors.slot_list_enabled``); superusers may use every one, an
    anonymous user only those for everyone."""
    servers = McpServer.objects.filter(enabled=True)
    if not user.is_authenticated:
        servers = servers.filter(groups__isnull=True)
    elif not getattr(user, "is_superuser", False):
        servers = servers.filter(Q(groups__isnull=True) | Q(groups__user=user)).distinct()
    return servers.order_by("label")


def tool_list_usable(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[McpTool]:
    """The tools ``user`` may be offered: of their usable servers, still listed (not
    ``gone``), and not ``off`` (``ask`` ones included: the caller asks before each call)."""
    servers = server_list_usable(user=user)
    return (
        McpTool.objects.filter(server__in=servers, gone=False)
        .exclude(policy=McpTool.Policy.OFF)
        .select_related("server")
        .order_by("server__label", "name")
    )
