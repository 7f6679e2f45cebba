"""Usage counted per day and per hour (``UsageDay``, ``UsageHour``), and the budgets it is counted
against (``Quota``, ``QuotaReservation``)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from chat.models.keys import ApiKey
from chat.models.widgets import Widget

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
