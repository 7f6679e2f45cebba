"""Backends' API keys encrypted at rest (chat.crypto): existing keys are encrypted into the new
column and the plain one dropped; reversed, they are decrypted back."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def encrypt_keys(apps: Any, schema_editor: Any) -> None:
    from chat import crypto

    Backend = apps.get_model("chat", "Backend")
    for backend in Backend.objects.exclude(api_key=""):
        backend.api_key_encrypted = crypto.encrypt(backend.api_key)
        backend.save(update_fields=["api_key_encrypted"])


def decrypt_keys(apps: Any, schema_editor: Any) -> None:
    from chat import crypto

    Backend = apps.get_model("chat", "Backend")
    for backend in Backend.objects.exclude(api_key_encrypted=""):
        backend.api_key = crypto.decrypt(backend.api_key_encrypted, what=f"backend {backend.pk}")
        backend.save(update_fields=["api_key"])


class Migration(migrations.Migration):
    dependencies = [("chat", "0007_widget_limits")]

    operations = [
        migrations.AddField(
            model_name="backend",
            name="api_key_encrypted",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.RunPython(encrypt_keys, decrypt_keys),
        migrations.RemoveField(model_name="backend", name="api_key"),
    ]
