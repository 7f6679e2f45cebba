"""``python manage.py rotate_encryption_key``: re-encrypt every stored secret (backends' API
keys, MCP servers' secrets) under the first key of SLIPSTREAM_ENCRYPTION_KEY, so the others can
then be dropped."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from chat import crypto
from chat.models import Backend, McpServer


class Command(BaseCommand):
    help = "Re-encrypt stored secrets under the first SLIPSTREAM_ENCRYPTION_KEY."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            backends = Backend.objects.select_for_update().exclude(api_key_encrypted="")
            count = 0
            for backend in backends:
                backend.api_key_encrypted = crypto.reencrypt(backend.api_key_encrypted)
                backend.save(update_fields=["api_key_encrypted"])
                count += 1
            servers = McpServer.objects.select_for_update().exclude(secret_encrypted="")
            secrets = 0
            for server in servers:
                server.secret_encrypted = crypto.reencrypt(server.secret_encrypted)
                server.save(update_fields=["secret_encrypted"])
                secrets += 1
        self.stdout.write(f"Re-encrypted {count} backend API key(s).")
        self.stdout.write(f"Re-encrypted {secrets} MCP server secret(s).")
