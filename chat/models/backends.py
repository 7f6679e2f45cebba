"""Upstream servers (``Backend``), the named models on them that requests address (``Slot``),
and the MCP servers whose tools they may call (``McpServer``, ``McpTool``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from chat import crypto
from chat.relay.slots import SlotState
from chat.relay.types import BackendConfig, SlotConfig

if TYPE_CHECKING:
    from chat.tools.client import ServerSpec


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
