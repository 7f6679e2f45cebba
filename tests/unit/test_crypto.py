"""chat.crypto: secrets at rest under MultiFernet, rotated by putting a new key first."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.test import override_settings

from chat import crypto
from chat.models import Backend

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_round_trip_and_empty() -> None:
    token = crypto.encrypt("sk-upstream")
    assert "sk-upstream" not in token
    assert crypto.decrypt(token) == "sk-upstream"
    assert crypto.encrypt("") == crypto.decrypt("") == ""


def test_derived_key_follows_the_secret_key() -> None:
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[], SECRET_KEY="one"):
        token = crypto.encrypt("sk-upstream")
    with (
        override_settings(SLIPSTREAM_ENCRYPTION_KEY=[], SECRET_KEY="two"),
        pytest.raises(crypto.SecretUnreadable) as failure,
    ):
        crypto.decrypt(token, what="backend x's API key")
    assert token not in str(failure.value)
    assert "backend x's API key" in str(failure.value)


def test_rotation_first_key_encrypts_all_decrypt() -> None:
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[OLD]):
        token = crypto.encrypt("sk-upstream")
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[NEW, OLD]):
        assert crypto.decrypt(token) == "sk-upstream"
        rotated = crypto.reencrypt(token)
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[NEW]):
        assert crypto.decrypt(rotated) == "sk-upstream"
        with pytest.raises(crypto.SecretUnreadable):
            crypto.decrypt(token)


@pytest.mark.django_db
def test_rotate_command_reencrypts_backends() -> None:
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[OLD]):
        backend = Backend(name="b", base_url="http://127.0.0.1:9/v1")
        backend.set_api_key("sk-upstream")
        backend.save()
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[NEW, OLD]):
        call_command("rotate_encryption_key", stdout=io.StringIO())
    with override_settings(SLIPSTREAM_ENCRYPTION_KEY=[NEW]):
        backend.refresh_from_db()
        assert backend.config().api_key == "sk-upstream"
        assert "sk-upstream" not in repr(backend.config())
