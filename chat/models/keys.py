"""The ``/v1`` API's keys (``ApiKey``), its calls (``ApiCall``), stored Responses API responses
(``StoredResponse``), and the version that cached lookups are read under (``ReadCacheVersion``)."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models

API_KEY_PREFIX = "sk-slip-"


def api_key_digest(raw: str) -> str:
    """What is stored of a raw API key: its SHA-256, hex."""
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKey(models.Model):
    """A key for the ``/v1`` API. Only a SHA-256 digest of the key is stored: API keys are 256
    random bits, so a fast digest is as safe as a slow password hash and costs no request time.
    The visible ``prefix`` lets users tell keys apart."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    store_conversations = models.BooleanField(
        default=False, help_text="Keep this key's calls as conversations of its owner."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class ReadCacheVersion(models.Model):
    """One row (pk 1): the version of ``chat.readcache``'s lookups when the cache is private to
    each process (locmem, the default without REDIS_URL), so that a key revoked or a slot
    disabled in one process is seen by every other on its next call."""

    version = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"read cache version {self.version}"


class ApiCall(models.Model):
    """One ``/v1`` call, recorded once when it ends."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, related_name="calls")
    endpoint = models.CharField(max_length=40)
    slot_name = models.CharField(max_length=100, blank=True)
    stream = models.BooleanField(default=False)
    http_status = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=12, help_text="complete, stopped or error")
    error_code = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.FloatField(
        "TTFT (ms)", null=True, blank=True, help_text="Time to first token, ms."
    )
    duration_ms = models.FloatField("duration (ms)", help_text="Whole call, ms.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API call"

    def __str__(self) -> str:
        return f"{self.endpoint} {self.outcome} ({self.http_status})"


class StoredResponse(models.Model):
    """A ``/v1/responses`` call kept for ``GET``, ``previous_response_id``, input items and
    resuming its stream (OpenAI's ``store``, true by default). ``response`` is the response
    object as the API returns it (``in_progress`` while streaming, written again once when it
    ends); ``input_items`` are this request's input items (ids given); ``chunks`` are the
    upstream's chat chunks, zlib-compressed JSON lines, from which its events re-render
    exactly (``chat.relay.responses.ResponseEvents``)."""

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        INCOMPLETE = "incomplete"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.CharField(primary_key=True, max_length=80, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="responses"
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="responses"
    )
    previous = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    slot_name = models.CharField(max_length=100)
    status = models.CharField(max_length=12, choices=Status.choices)
    generation_id = models.CharField(max_length=64, blank=True)
    # Passed through from the backend's own /responses: chunks are its events, not chat chunks.
    native = models.BooleanField(default=False)
    response = models.JSONField()
    input_items = models.JSONField(default=list)
    chunks = models.BinaryField(default=b"", editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "stored response"

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"
