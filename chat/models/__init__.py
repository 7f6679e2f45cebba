"""What Slipstream stores: upstream servers and their slots, and every conversation.

Words follow DESIGN.md: a *backend* is one upstream server, a *slot* a named model on it that
requests address by its ``name`` (the ``model`` field of an OpenAI request).

One module per subject; every model is importable from here (``from chat.models import Slot``),
as Django and the migrations expect.
"""

from __future__ import annotations

from chat.models.accounts import AuditEntry, SignOnIdentity, SignOnSession
from chat.models.backends import (
    DOCUMENT_TOKENS,
    FALLBACK_DEPTH,
    IMAGE_MAX_SIDE,
    MCP_CREDENTIAL_HEADERS,
    Backend,
    McpServer,
    McpTool,
    Slot,
)
from chat.models.conversations import (
    Attachment,
    Conversation,
    Folder,
    Message,
    Prompt,
    attachment_path,
)
from chat.models.keys import (
    API_KEY_PREFIX,
    ApiCall,
    ApiKey,
    ReadCacheVersion,
    StoredResponse,
    api_key_digest,
)
from chat.models.usage import (
    TOKENS_PER_S_BUCKETS,
    TTFT_BUCKETS_MS,
    USAGE_HOURS_KEPT,
    Quota,
    QuotaReservation,
    UsageCounts,
    UsageDay,
    UsageHour,
    bucket_field,
    bucket_fields,
)
from chat.models.widgets import ORIGIN_RE, Widget, new_widget_key, normalise_origin

__all__ = [
    "API_KEY_PREFIX",
    "DOCUMENT_TOKENS",
    "FALLBACK_DEPTH",
    "IMAGE_MAX_SIDE",
    "MCP_CREDENTIAL_HEADERS",
    "ORIGIN_RE",
    "TOKENS_PER_S_BUCKETS",
    "TTFT_BUCKETS_MS",
    "USAGE_HOURS_KEPT",
    "ApiCall",
    "ApiKey",
    "Attachment",
    "AuditEntry",
    "Backend",
    "Conversation",
    "Folder",
    "McpServer",
    "McpTool",
    "Message",
    "Prompt",
    "Quota",
    "QuotaReservation",
    "ReadCacheVersion",
    "SignOnIdentity",
    "SignOnSession",
    "Slot",
    "StoredResponse",
    "UsageCounts",
    "UsageDay",
    "UsageHour",
    "Widget",
    "api_key_digest",
    "attachment_path",
    "bucket_field",
    "bucket_fields",
    "new_widget_key",
    "normalise_origin",
]
