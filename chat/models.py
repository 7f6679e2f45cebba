"""What Slipstream stores: upstream servers and their slots, and every conversation.

Words follow DESIGN.md: a *backend* is one upstream server, a *slot* a named model on it that
requests address by its ``name`` (the ``model`` field of an OpenAI request).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from chat import crypto
from chat.relay.generation import Status as GenerationStatus
from chat.relay.slots import SlotState
from chat.relay.types import BackendConfig, SlotConfig

if TYPE_CHECKING:
    from chat.tools.client import ServerSpec

ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9a-fA-F:]+\](:\d{1,5})?")


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin``: lower case, no slash."""
    return origin.strip().rstrip("/").lower()


def new_widget_key() -> str:
    return "wk_" + secrets.token_urlsafe(18)


class Backend(models.Model):
    """One upstream OpenAI-compatible server (vLLM, llama-server, Ollama, OpenAI, simulator)."""

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(
        max_length=500,
        help_text="OpenAI base URL, including the version prefix, e.g. http://127.0.0.1:8000/v1",
    )
    # The upstream's key, Fernet-encrypted (chat.crypto): written with set_api_key, read only by
    # config(), so the plain key exists in memory just long enough to build the relay's config.
    api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    connect_timeout_s = models.FloatField(
        "connect timeout (s)", default=5.0, help_text="Seconds to open a connection."
    )
    read_timeout_s = models.FloatField(
        "read timeout (s)",
        default=120.0,
        help_text="Longest silence between two bytes, in seconds, including the wait for the "
        "first token.",
    )
    total_timeout_s = models.FloatField(
        "total timeout (s)",
        default=900.0,
        help_text="Longest time for one whole answer, in seconds.",
    )
    health_path = models.CharField(
        max_length=200, default="/models", help_text="Probed relative to the base URL."
    )
    max_concurrency = models.PositiveIntegerField(
        default=64, help_text="Most requests in flight to this server at once."
    )

    class ResponsesApi(models.TextChoices):
        AUTO = "auto", "Detect at the first call"
        NATIVE = "native", "Native: the server has /responses"
        TRANSLATE = "translate", "Translate to chat completions"

    responses_api = models.CharField(
        "Responses API",
        max_length=10,
        choices=ResponsesApi.choices,
        default=ResponsesApi.AUTO,
        help_text="How /v1/responses reaches this server: passed to its own /responses "
        "(vLLM, llama.cpp's server, Ollama ≥ 0.13.3, OpenAI), or translated to chat "
        "completions (servers without it). Slots with stop strings always translate.",
    )
    responses_api_detected = models.BooleanField(
        "Responses API detected",
        null=True,
        blank=True,
        editable=False,
        help_text="What the first /v1/responses call found: yes (native), no (translated).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)

    @property
    def responses_native(self) -> bool | None:
        """Whether /v1/responses goes to this server's own /responses: True, False, or None
        while ``auto`` has not found out yet."""
        if self.responses_api == self.ResponsesApi.AUTO:
            return self.responses_api_detected
        return self.responses_api == self.ResponsesApi.NATIVE

    def set_api_key(self, plain: str) -> None:
        """Store ``plain`` encrypted (not saved yet); "" removes the key."""
        self.api_key_encrypted = crypto.encrypt(plain)

    def config(self) -> BackendConfig:
        """The relay's view of this backend: plain, hashable, ORM-free, its API key decrypted.

        Raises ``crypto.SecretUnreadable`` (naming the backend, not the key) when no configured
        encryption key decrypts the stored one.
        """
        return BackendConfig(
            base_url=self.base_url,
            api_key=crypto.decrypt(self.api_key_encrypted, what=f"backend {self.name}'s API key"),
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            total_timeout_s=self.total_timeout_s,
            max_connections=self.max_concurrency,
        )


# Header names that carry credentials: those go in McpServer's encrypted secret, never in its
# plain headers (which are shown in the admin and kept in clear).
MCP_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
)


class McpServer(models.Model):
    """An MCP server whose tools models may call (issue 31; ``chat.tools``): Streamable HTTP at
    ``url``, or a stdio program whose command line is only in the deployment's configuration
    (``SLIPSTREAM_MCP_STDIO_SERVERS[label]``), never in this row. Its tool list is cached in
    ``McpTool`` rows, refreshed on demand (``chat.tools.catalog.refresh``)."""

    class Transport(models.TextChoices):
        HTTP = "http", "Streamable HTTP"
        STDIO = "stdio", "stdio (command from SLIPSTREAM_MCP_STDIO_SERVERS)"

    label = models.CharField(
        max_length=64,
        unique=True,
        validators=[
            RegexValidator(r"^[a-zA-Z0-9_-]+$", "Letters, digits, hyphens and underscores only.")
        ],
        help_text="How models and users see it (server_label). A stdio server's label is its "
        "name in SLIPSTREAM_MCP_STDIO_SERVERS.",
    )
    transport = models.CharField(max_length=10, choices=Transport.choices, default=Transport.HTTP)
    url = models.CharField(
        "URL",
        max_length=500,
        blank=True,
        help_text="The Streamable HTTP endpoint, e.g. https://mcp.example.org/mcp. Its host must "
        "resolve to public addresses unless listed in SLIPSTREAM_MCP_ALLOW_HOSTS.",
    )
    headers = models.JSONField(
        default=dict,
        blank=True,
        help_text='Extra HTTP headers, not secret, as a JSON object: {"X-Team": "infra"}. '
        "Credentials go in the secret.",
    )
    # Fernet-encrypted (chat.crypto) like Backend.api_key_encrypted: written with set_secret,
    # read only by spec(); sent as "Authorization: Bearer <secret>".
    secret_encrypted = models.TextField(blank=True, default="", editable=False)
    groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="mcp_servers",
        help_text="Only members of these groups may use this server's tools; none: everyone.",
    )
    enabled = models.BooleanField(default=True)
    timeout_s = models.FloatField(
        "timeout (s)",
        default=30.0,
        validators=[MinValueValidator(0.1)],
        help_text="Longest time for one tool call or tool listing, connecting included.",
    )
    tools_fetched_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["label"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.label

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_encrypted)

    def set_secret(self, plain: str) -> None:
        """Store ``plain`` encrypted (not saved yet); "" removes the secret."""
        self.secret_encrypted = crypto.encrypt(plain)

    def clean(self) -> None:
        """The transport's own fields: a URL for http (its host is checked by the admin's form
        and again at each connection, chat.tools.urls), none for stdio; headers as a JSON
        object of strings without credentials."""
        errors: dict[str, str] = {}
        if self.transport == self.Transport.HTTP and not self.url:
            errors["url"] = "A Streamable HTTP server needs its URL."
        if self.transport == self.Transport.STDIO and self.url:
            errors["url"] = "A stdio server has no URL: its command is in the configuration."
        if not isinstance(self.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            errors["headers"] = 'A JSON object of strings: {"X-Team": "infra"}.'
        elif any(k.lower() in MCP_CREDENTIAL_HEADERS for k in self.headers):
            errors["headers"] = "Credentials go in the secret, which is stored encrypted."
        if errors:
            raise ValidationError(errors)

    def spec(self) -> ServerSpec:
        """The client's view of this server (``chat.tools.client.ServerSpec``): plain, ORM-free,
        its secret decrypted, a stdio server's command read from the configuration. Raises
        ``chat.tools.client.McpNotConfigured`` for a stdio server that is not configured and
        ``crypto.SecretUnreadable`` (naming the server) for a secret no key opens."""
        from chat.tools import client, config

        command = None
        if self.transport == self.Transport.STDIO:
            try:
                command = config.lookup(settings.SLIPSTREAM_MCP_STDIO_SERVERS, self.label)
            except config.StdioConfigError as exc:
                raise client.McpNotConfigured(f"MCP server {self.label}: {exc}") from None
        return client.ServerSpec(
            label=self.label,
            transport=self.transport,
            url=self.url if self.transport == self.Transport.HTTP else "",
            headers=dict(self.headers or {}),
            secret=crypto.decrypt(self.secret_encrypted, what=f"MCP server {self.label}'s secret"),
            stdio=command,
            timeout_s=self.timeout_s,
            allow_hosts=tuple(settings.SLIPSTREAM_MCP_ALLOW_HOSTS),
        )


class McpTool(models.Model):
    """One tool of an ``McpServer``, as its last tool listing described it, and what staff
    allow of it. New tools start at ``ask`` (the user approves each call): a server that adds a
    tool cannot make it run unseen; staff move it to ``allowed`` or ``off``. A tool missing from
    the latest listing is marked ``gone`` (its policy kept, for when it comes back)."""

    class Policy(models.TextChoices):
        ALLOWED = "allowed", "Allowed"
        ASK = "ask", "Ask the user first"
        OFF = "off", "Off"

    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200)
    # The server's own words: plain text, shown escaped, never rendered as HTML.
    description = models.TextField(blank=True, default="")
    input_schema = models.JSONField(default=dict, blank=True)
    policy = models.CharField(max_length=10, choices=Policy.choices, default=Policy.ASK)
    gone = models.BooleanField(
        default=False, help_text="Missing from the server's latest tool list."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["server", "name"]
        verbose_name = "MCP tool"
        constraints = [
            models.UniqueConstraint(fields=["server", "name"], name="mcp_tool_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.server.label}.{self.name}"


# A slot's attachment defaults (``Slot.image_max_side``, ``Slot.document_tokens``), also what an
# upload is made ready for when no slot is named: 1,568 px is the side vision models commonly
# tile to without loss; 8,000 tokens leave room for the conversation in an 8k-32k context.
IMAGE_MAX_SIDE = 1568
DOCUMENT_TOKENS = 8000


# How many fallbacks deep a slot's chain is loaded (selectors.SLOT_RELATED matches it).
FALLBACK_DEPTH = 2


class Slot(models.Model):
    """A named, routable model on a backend, with the defaults its requests get."""

    class State(models.TextChoices):
        # The relay's states (chat.relay.slots.SlotState), stored.
        COLD = SlotState.COLD.value
        WARMING = SlotState.WARMING.value
        READY = SlotState.READY.value
        ERROR = SlotState.ERROR.value

    name = models.SlugField(
        max_length=100, unique=True, help_text='What clients put in "model", e.g. "primary".'
    )
    backend = models.ForeignKey(Backend, on_delete=models.PROTECT, related_name="slots")
    upstream_model = models.CharField(
        max_length=200, help_text="The model id the backend knows, sent upstream as model."
    )
    display_name = models.CharField(max_length=100, blank=True)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    stop = models.JSONField(
        default=list, blank=True, help_text='Stop sequences, a JSON list of strings: ["\\n\\n"].'
    )
    is_default = models.BooleanField(default=False, help_text="Preselected for new chats.")
    enabled = models.BooleanField(default=True)
    groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="slots",
        help_text="Only members of these groups see and use this slot; none: everyone.",
    )

    # Dispatcher policy (chat.relay.dispatch).
    class SingleFlight(models.TextChoices):
        OFF = "off", "Off"
        NOT_READY = "not_ready", "Only while the slot is not ready"
        ALWAYS = "always", "Always"

    single_flight = models.CharField(
        max_length=10,
        choices=SingleFlight.choices,
        default=SingleFlight.NOT_READY,
        help_text="Identical concurrent requests share one upstream call.",
    )
    max_concurrency = models.PositiveIntegerField(
        default=32, help_text="Most requests in flight on this slot; the rest queue in order."
    )
    queue_timeout_s = models.FloatField(
        "queue timeout (s)",
        default=30.0,
        help_text="Longest wait in the queue, in seconds, before HTTP 429.",
    )
    cold_boot_timeout_s = models.FloatField(
        "cold boot timeout (s)",
        default=120.0,
        help_text="Longest wait for a loading model, in seconds, before HTTP 503.",
    )
    max_retries = models.PositiveSmallIntegerField(
        default=2,
        help_text="Extra attempts on connection errors, 502/503/504 and timeouts, only before "
        "the first token.",
    )
    fallback = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fallback_for",
        help_text="Takes requests when this slot is in error or its retries are spent.",
    )

    # Attachments (chat.attachments): what this slot's model can read.
    accepts_images = models.BooleanField(
        default=False,
        help_text="The model reads images (a vision model): the chat and /v1 send it "
        "image_url parts; otherwise an image is refused before the call.",
    )
    image_max_side = models.PositiveIntegerField(
        "image max side (px)",
        default=IMAGE_MAX_SIDE,
        validators=[MinValueValidator(64)],
        help_text="Images are downscaled so that their longer side is at most this many pixels.",
    )
    image_links = models.BooleanField(
        "send images as links",
        default=False,
        help_text="Send images as short-lived signed links to Slipstream instead of inline "
        "data: URLs, for servers that fetch images themselves (SLIPSTREAM_PUBLIC_URL must be "
        "an address the server can reach).",
    )
    document_tokens = models.PositiveIntegerField(
        "document budget (tokens)",
        default=DOCUMENT_TOKENS,
        validators=[MinValueValidator(100)],
        help_text="Most tokens of attached documents' text sent with one message (about 4 "
        "characters a token); the rest is cut, with a note in the chat.",
    )

    # Remote URLs in /v1 content parts: a server that fetches them itself must not be sent this
    # network's own addresses. The values are chat.media_urls.POLICIES.
    class MediaUrls(models.TextChoices):
        PUBLIC = "public", "Public http(s) URLs only"
        NONE = "none", "No remote URLs (data: only)"

    media_urls = models.CharField(
        "remote media URLs",
        max_length=10,
        choices=MediaUrls.choices,
        default=MediaUrls.PUBLIC,
        help_text="Which URLs in /v1 image and file parts go to the server: http(s) URLs whose "
        "host resolves only to public addresses (or is listed in "
        "SLIPSTREAM_MEDIA_URL_ALLOW_HOSTS), or none, for servers that should fetch nothing; "
        "data: URLs always. Others are refused with HTTP 400 before the call.",
    )

    # /v1/responses on a backend without the Responses API (chat.relay.responses).
    class HostedTools(models.TextChoices):
        OMIT = "omit", "Leave them out and serve the rest"
        REFUSE = "refuse", "Refuse the request (HTTP 400)"

    hosted_tools = models.CharField(
        max_length=10,
        choices=HostedTools.choices,
        default=HostedTools.OMIT,
        help_text="What a /v1/responses request does with tools its backend would have to run "
        "(web_search, file_search, mcp, …) when the backend speaks only chat completions: left "
        "out (named in the Slipstream-Omitted-Tools response header) or refused. A backend "
        "with its own Responses API gets them as sent.",
    )

    # Live state, written by the dispatcher on each change.
    state = models.CharField(max_length=10, choices=State.choices, default=State.COLD)
    last_error = models.TextField(blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-is_default", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        return self.display_name or self.name

    def defaults(self) -> dict[str, Any]:
        """The request fields this slot fills in when a request is silent about them."""
        fields: dict[str, Any] = {}
        if self.temperature is not None:
            fields["temperature"] = self.temperature
        if self.max_tokens is not None:
            fields["max_tokens"] = self.max_tokens
        return fields

    def stop_strings(self) -> tuple[str, ...]:
        """The slot's stop sequences, enforced on every answer along with the request's."""
        return tuple(s for s in self.stop if isinstance(s, str) and s) if self.stop else ()

    def config(self, *, depth: int = 0) -> SlotConfig:
        """The relay's view of this slot and its enabled fallbacks (``FALLBACK_DEPTH`` deep):
        plain, ORM-free. Needs ``backend`` and the fallback chain loaded, as
        ``selectors.slot_aget`` does (``SLOT_RELATED``). Raises ``crypto.SecretUnreadable`` as
        ``Backend.config`` does."""
        fallback = None
        if depth < FALLBACK_DEPTH and self.fallback_id is not None:
            candidate = self.fallback
            if candidate is not None and candidate.enabled:
                fallback = candidate.config(depth=depth + 1)
        return SlotConfig(
            id=self.pk,
            name=self.name,
            upstream_model=self.upstream_model,
            backend=self.backend.config(),
            system_prompt=self.system_prompt,
            defaults=self.defaults(),
            stop=self.stop_strings(),
            health_path=self.backend.health_path,
            single_flight=self.single_flight,
            max_concurrency=max(1, self.max_concurrency),
            queue_timeout_s=self.queue_timeout_s,
            cold_boot_timeout_s=self.cold_boot_timeout_s,
            max_retries=self.max_retries,
            fallback=fallback,
            responses_native=self.backend.responses_native,
            backend_id=self.backend_id,
        )

    def clean(self) -> None:
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValidationError({"stop": 'A JSON list of non-empty strings, e.g. ["\\n\\n"].'})
        seen, slot = {self.pk}, self.fallback
        while slot is not None:
            if slot.pk in seen:
                raise ValidationError({"fallback": "Fallbacks must not loop back to this slot."})
            seen.add(slot.pk)
            slot = slot.fallback


class Widget(models.Model):
    """A chat that any allowed site embeds: one slot, anonymous visitors, per-visitor limits."""

    public_key = models.SlugField(
        max_length=40,
        unique=True,
        default=new_widget_key,
        help_text="Appears in the embed snippet; identifies the widget, grants nothing else.",
    )
    name = models.CharField(max_length=100)
    slot = models.ForeignKey(Slot, on_delete=models.PROTECT, related_name="widgets")
    system_prompt = models.TextField(blank=True, help_text="Replaces the slot's system prompt.")
    greeting = models.TextField(blank=True, help_text="Shown first to every visitor.")
    allowed_origins = models.TextField(
        blank=True,
        help_text="Sites that may embed it, one scheme://host[:port] per line. None: no site can.",
    )
    title = models.CharField(max_length=100, default="Ask us")
    accent_color = models.CharField(
        max_length=7,
        default="#2563eb",
        validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "A colour like #2563eb.")],
    )
    accepts_images = models.BooleanField(
        default=False, help_text="Visitors may attach images (the slot must accept images)."
    )
    image_max_bytes = models.PositiveIntegerField(
        "image size limit (bytes)",
        default=5 * 1024 * 1024,
        help_text="Largest image a visitor may attach, in bytes.",
    )
    rate_per_minute = models.PositiveIntegerField(default=10, help_text="Messages per visitor.")
    rate_per_day = models.PositiveIntegerField(default=200, help_text="Messages per visitor.")
    # A visitor is free to mint (a new token is one POST away), so the visitor's own limits
    # hold only beside limits per client IP and for the whole widget (issue 16, finding 4).
    ip_rate_per_minute = models.PositiveIntegerField(
        default=30, help_text="Messages per client IP address, all its visitors together."
    )
    ip_rate_per_day = models.PositiveIntegerField(
        default=1000, help_text="Messages per client IP address, all its visitors together."
    )
    daily_cap = models.PositiveIntegerField(
        default=5000, help_text="Messages per day from everyone together: protects the slot."
    )
    visitors_per_hour = models.PositiveIntegerField(
        default=600, help_text="New visitors per hour, everyone together."
    )
    ip_visitors_per_hour = models.PositiveIntegerField(
        default=20, help_text="New visitors per hour from one client IP address."
    )
    visitor_days = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1)],
        help_text="Days a visitor's token lasts; after that the visitor starts afresh.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def embed_snippets(self, *, base_url: str) -> dict[str, str]:
        """The two ways to embed this widget into a page, as the admin shows them:
        ``{"script": <script> tag, "iframe": <iframe> tag}``, on the site at ``base_url``."""
        page_url = base_url.rstrip("/") + reverse("widget:page", args=[self.public_key])
        script_url = base_url.rstrip("/") + reverse("widget:embed", args=[self.public_key])
        return {
            "script": f'<script src="{script_url}" async></script>',
            "iframe": (
                f'<iframe src="{page_url}" title="{escape(self.title)}" '
                'style="width:380px;height:560px;border:0"></iframe>'
            ),
        }

    def origins(self) -> list[str]:
        """The allowed origins, normalised (no trailing slash, lower-case scheme and host)."""
        return [normalise_origin(line) for line in self.allowed_origins.split() if line.strip()]

    def clean(self) -> None:
        for line in self.allowed_origins.split():
            if not ORIGIN_RE.fullmatch(line.strip().rstrip("/")):
                raise ValidationError(
                    {"allowed_origins": f"{line!r} is not an origin like https://example.com"}
                )


class Folder(models.Model):
    """A user's folder of conversations in the sidebar (a conversation is in one or none)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="folders"
    )
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="folder_user_name")]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # A team member's conversation, or a widget visitor's (then user is empty).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="conversations",
        null=True,
        blank=True,
    )
    widget = models.ForeignKey(
        Widget, on_delete=models.CASCADE, null=True, blank=True, related_name="conversations"
    )
    visitor_id = models.UUIDField(null=True, blank=True, db_index=True)
    title = models.CharField(max_length=200, blank=True)
    slot = models.ForeignKey(Slot, on_delete=models.SET_NULL, null=True, blank=True)
    # Per-conversation settings: empty means the slot's own defaults.
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    # The message whose branch is shown: the path from the root to it is the conversation.
    current_leaf = models.ForeignKey(
        "Message", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Set while shared: other signed-in members open it read-only at /s/<share_id>/.
    share_id = models.UUIDField(null=True, blank=True, unique=True)
    # The sidebar's organisation: pinned on top, in a folder, or archived (out of the list).
    pinned = models.BooleanField(default=False)
    folder = models.ForeignKey(
        Folder, on_delete=models.SET_NULL, null=True, blank=True, related_name="conversations"
    )
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or "New chat"


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"

    class Status(models.TextChoices):
        # A generation's statuses (chat.relay.generation.Status), and one of storage's own.
        STREAMING = GenerationStatus.STREAMING.value
        COMPLETE = GenerationStatus.COMPLETE.value
        STOPPED = GenerationStatus.STOPPED.value
        ERROR = GenerationStatus.ERROR.value
        INTERRUPTED = "interrupted"  # its process died mid-answer (sweep.sweep_interrupted)

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    # The message this one answers or follows; siblings (same parent) are branches: an edited
    # user message, a regenerated answer.
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    # The user's attachments sent with this message (``Attachment`` ids as strings, in order).
    # A list on the row, not a many-to-many table, so that building an answer's history needs
    # no extra query when nothing is attached; an edit's new version lists the same ids.
    attachment_ids = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    finish_reason = models.CharField(max_length=32, blank=True)
    usage = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="OpenAI error envelope, if any.")
    slot_name = models.CharField(max_length=100, blank=True)
    ttft_ms = models.FloatField(
        "TTFT (ms)", null=True, blank=True, help_text="Time to first token, ms."
    )
    tokens_per_s = models.FloatField("tokens/s", null=True, blank=True)
    # The generation that streams this answer: a reloaded page resumes it by this id.
    generation_id = models.CharField(max_length=32, blank=True, db_index=True)
    # While streaming, where the stored text stands in the generation's chunks, so a reloaded
    # page goes on from there (services.resume_point): {"seq": the SSE id of the last chunk the
    # text includes, and the raw text where it differs from the stored fields}. None before the
    # first checkpoint, once stored whole, and on answers checkpointed before it existed.
    checkpoint = models.JSONField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


def attachment_path(attachment: Attachment, filename: str) -> str:
    """Where an attachment's file is stored: under a random name, never the uploaded one."""
    return f"attachments/{attachment.created_at:%Y/%m}/{attachment.pk.hex}"


class Attachment(models.Model):
    """A file a user (or a widget visitor) attached to a message: an image sent to vision
    models as an ``image_url`` part, or a document whose extracted ``text`` is sent as context.

    Uploaded before the message is sent (``conversation`` None until then), served only to its
    owner and to viewers of its conversation's share link (``views.attachment_file``), deleted
    with its conversation. ``size_bytes`` is the stored file's size, which counts against the
    owner's quota of stored bytes."""

    class Kind(models.TextChoices):
        IMAGE = "image"
        DOCUMENT = "document"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="attachments",
    )
    widget = models.ForeignKey(
        Widget, on_delete=models.CASCADE, null=True, blank=True, related_name="attachments"
    )
    visitor_id = models.UUIDField(null=True, blank=True)
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="attachments",
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=255, help_text="The file's name as uploaded.")
    mime = models.CharField("MIME type", max_length=100, help_text="Found from the content.")
    size_bytes = models.PositiveBigIntegerField("size (bytes)")
    file = models.FileField(upload_to=attachment_path, max_length=200)
    sha256 = models.CharField(max_length=64, help_text="Of the stored file.")
    width = models.PositiveIntegerField("width (px)", null=True, blank=True)
    height = models.PositiveIntegerField("height (px)", null=True, blank=True)
    # Documents: the text extracted once at upload, so a regenerate does not extract again.
    text = models.TextField(blank=True)
    text_tokens = models.PositiveIntegerField(
        "text (tokens)", null=True, blank=True, help_text="Tokens of the text that are sent."
    )
    text_truncated = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return reverse("chat:attachment", args=[self.pk])

    @property
    def type_label(self) -> str:
        """A document's badge: its extension in capitals ("PDF", "MD"), else "FILE" (as
        render.js' ``typeBadge``)."""
        _, dot, extension = self.name.rpartition(".")
        return extension.upper() if dot and _ and len(extension) <= 4 else "FILE"


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


class AuditEntry(LogEntry):
    """Django admin's own log, under the name staff look for: who changed what and when (every
    admin change, and API keys made or revoked on the keys page: ``services.audit_log``)."""

    class Meta:
        proxy = True
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"


# UsageDay's histogram buckets: upper bounds, ms and tokens/s (see its fields).
TTFT_BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000)
TOKENS_PER_S_BUCKETS = (5, 10, 20, 40, 80, 160)


def bucket_field(prefix: str, bounds: tuple[int, ...], value: float) -> str:
    """The ``UsageDay`` column counting ``value``: ``{prefix}_le_{bound}`` for the first
    bound it does not pass, else ``{prefix}_over_{last bound}``."""
    for bound in bounds:
        if value <= bound:
            return f"{prefix}_le_{bound}"
    return f"{prefix}_over_{bounds[-1]}"


def bucket_fields(prefix: str, bounds: tuple[int, ...]) -> list[str]:
    """Every column of one ``UsageDay`` histogram, lowest bucket first."""
    return [f"{prefix}_le_{b}" for b in bounds] + [f"{prefix}_over_{bounds[-1]}"]


class UsageCounts(models.Model):
    """What ``UsageDay`` and ``UsageHour`` count of one scope over their period: a user's chat
    answers (``user``), a widget's (``widget``) or an API key's calls (``api_key``, with its
    ``user``), on one slot. Written once per answer or call (one UPDATE per period, or an
    INSERT for the period's first), never per token, so reports read these rows, never raw
    calls. ``scope`` is the unique text of the scope (nullable foreign keys cannot make a
    unique key that works on every database)."""

    scope = models.CharField(max_length=200)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    widget = models.ForeignKey(
        Widget, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    slot_name = models.CharField(max_length=100)
    requests = models.PositiveIntegerField(default=0)
    # What request budgets count (chat.quotas): the requests admitted past the quotas, whatever
    # became of them; ``requests`` also counts the /v1 calls refused before (a 400, the 429).
    admitted = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    ttft_ms_sum = models.FloatField(default=0, help_text="Sum of times to first token, ms.")
    ttft_count = models.PositiveIntegerField(default=0)
    # Histograms for percentiles (selectors.usage_percentiles): answers counted by time to
    # first token (ms) and by streaming speed (tokens/s), one column per bucket of
    # TTFT_BUCKETS_MS and TOKENS_PER_S_BUCKETS (upper bounds; the last column is above them),
    # so that recording an answer stays one UPDATE on every database.
    ttft_le_100 = models.PositiveIntegerField(default=0)
    ttft_le_250 = models.PositiveIntegerField(default=0)
    ttft_le_500 = models.PositiveIntegerField(default=0)
    ttft_le_1000 = models.PositiveIntegerField(default=0)
    ttft_le_2500 = models.PositiveIntegerField(default=0)
    ttft_le_5000 = models.PositiveIntegerField(default=0)
    ttft_le_10000 = models.PositiveIntegerField(default=0)
    ttft_over_10000 = models.PositiveIntegerField(default=0)
    tps_le_5 = models.PositiveIntegerField(default=0)
    tps_le_10 = models.PositiveIntegerField(default=0)
    tps_le_20 = models.PositiveIntegerField(default=0)
    tps_le_40 = models.PositiveIntegerField(default=0)
    tps_le_80 = models.PositiveIntegerField(default=0)
    tps_le_160 = models.PositiveIntegerField(default=0)
    tps_over_160 = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True

    @property
    def mean_ttft_ms(self) -> float | None:
        return self.ttft_ms_sum / self.ttft_count if self.ttft_count else None


class UsageDay(UsageCounts):
    """Usage of one day (UTC) by one scope (``UsageCounts``): what reports over days and
    quotas read."""

    day = models.DateField()

    class Meta:
        ordering = ["-day", "scope"]
        verbose_name = "usage (per day)"
        verbose_name_plural = "usage (per day)"
        constraints = [models.UniqueConstraint(fields=["day", "scope"], name="usage_day_scope")]

    def __str__(self) -> str:
        return f"{self.day} {self.scope}"


# How long the per-hour usage is kept, hours: the usage pages show the last 48; a week leaves
# room for a look back, and the table stays small (one row per scope and hour used).
USAGE_HOURS_KEPT = 7 * 24


class UsageHour(UsageCounts):
    """Usage of one hour (UTC) by one scope (``UsageCounts``), for the usage pages' last 48
    hours: ``hour`` is the hour's start (minutes and seconds 0, UTC). Written in the same
    batch as the ``UsageDay`` row (``chat.records``); rows older than ``USAGE_HOURS_KEPT``
    are deleted by the sweeper (``services.usage_hour_aprune``)."""

    hour = models.DateTimeField()

    class Meta:
        ordering = ["-hour", "scope"]
        verbose_name = "usage (per hour)"
        verbose_name_plural = "usage (per hour)"
        # Also the index the pages' ``hour >= …`` and the prune's ``hour < …`` use.
        constraints = [models.UniqueConstraint(fields=["hour", "scope"], name="usage_hour_scope")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} UTC {self.scope}"


class Quota(models.Model):
    """A budget per day or per month (UTC) of tokens (prompt + completion) and/or requests,
    for one user (their chat answers and all their keys' calls), one group (its members
    together) or one API key. Each request is admitted before its upstream call
    (``quotas.admit``), which reserves its share until it ends (``QuotaReservation``); what is
    used comes from the per-day usage (``UsageDay``)."""

    class Period(models.TextChoices):
        DAY = "day", "per day"
        MONTH = "month", "per month"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    group = models.ForeignKey(Group, on_delete=models.CASCADE, null=True, blank=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, null=True, blank=True)
    period = models.CharField(max_length=5, choices=Period.choices, default=Period.DAY)
    max_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt and completion tokens together; empty: no limit."
    )
    max_requests = models.PositiveIntegerField(
        null=True, blank=True, help_text="Answers and API calls; empty: no limit."
    )

    class Meta:
        verbose_name = "quota"

    def __str__(self) -> str:
        return f"{self.target} {self.get_period_display()}"

    @property
    def target(self) -> str:
        """Whose budget it is, in words ("user alice", "group team", "API key laptop (…)")."""
        if self.user_id is not None and self.user is not None:
            return f"user {self.user.get_username()}"
        if self.group_id is not None and self.group is not None:
            return f"group {self.group.name}"
        return f"API key {self.api_key}"

    def clean(self) -> None:
        targets = [t for t in (self.user_id, self.group_id, self.api_key_id) if t is not None]
        if len(targets) != 1:
            raise ValidationError("A quota is for exactly one user, one group or one API key.")
        if self.max_tokens is None and self.max_requests is None:
            raise ValidationError("Give a token budget, a request budget, or both.")


class QuotaReservation(models.Model):
    """What one request admitted under quotas holds of its user's, their groups' and its API
    key's budgets while it runs (``chat.quotas``): one request, and ``tokens``, its output
    limit as capped at admission. Counted with the ``UsageDay`` rows until its record settles
    it: deleted in the transaction that counts what the request used (``chat.records``). One
    whose process died counts until ``expires_at``, which that process pushes back while it
    holds the reservation."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    tokens = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "quota reservation"

    def __str__(self) -> str:
        return f"{self.tokens} tokens until {self.expires_at:%Y-%m-%d %H:%M:%S}"


class SignOnIdentity(models.Model):
    """The account at an OpenID Connect provider that signs in as one user (``chat.sso``): the
    provider's ``iss`` and the account's ``sub`` claim, which OpenID Connect Core 1.0 §2 says
    together identify it for good (an e-mail address or a username may change or be reused)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sign_on_identities"
    )
    issuer = models.URLField(max_length=400)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="sign_on_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class SignOnSession(models.Model):
    """One browser session signed in through single sign-on (``chat.sso``): the tokens that let
    Slipstream ask the provider, every ``SLIPSTREAM_SSO_RECHECK_S``, whether the account may
    still sign in (a refresh token grant, RFC 6749 §6; or, without one, the UserInfo endpoint
    while the access token lasts). Tokens are Fernet-encrypted (``chat.crypto``), as backends'
    API keys are. Deleted with the session it belongs to (sign-out, or the provider's refusal)."""

    identity = models.ForeignKey(SignOnIdentity, on_delete=models.CASCADE, related_name="sessions")
    # Django's session key; kept up to date by each recheck (a key can be cycled).
    session_key = models.CharField(max_length=40, db_index=True)
    refresh_token_encrypted = models.TextField(blank=True, default="", editable=False)
    access_token_encrypted = models.TextField(blank=True, default="", editable=False)
    access_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    # A recheck in progress (in any process) holds the row until then: one refresh at a time,
    # since a provider that rotates refresh tokens may revoke the grant when one is reused.
    busy_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "single sign-on session"

    def __str__(self) -> str:
        return f"{self.identity} since {self.created_at:%Y-%m-%d %H:%M}"


class Prompt(models.Model):
    """A saved prompt of the prompt library: its owner's, and shared with the members of
    ``group`` when set. ``/`` in the chat's message box finds it by title."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompts"
    )
    title = models.CharField(max_length=100)
    text = models.TextField(max_length=20_000)
    group = models.ForeignKey(
        Group,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Members of this group see and use it too.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title", "pk"]

    def __str__(self) -> str:
        return self.title
