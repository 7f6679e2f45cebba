"""The chat widget other websites embed (``Widget``) and its allowed origins."""

from __future__ import annotations

import re
import secrets

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse
from django.utils.html import escape

from chat.models.backends import Slot

ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9a-fA-F:]+\](:\d{1,5})?")


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin``: lower case, no slash."""
    return origin.strip().rstrip("/").lower()


def new_widget_key() -> str:
    return "wk_" + secrets.token_urlsafe(18)


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
