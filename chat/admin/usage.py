"""The admin of usage: per-day rows with CSV export and the dashboard (last days or hours),
quotas, single sign-on identities."""

from __future__ import annotations

import csv
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone

from chat import charts, selectors
from chat.admin.base import ReadOnlyAdmin
from chat.models import (
    Quota,
    SignOnIdentity,
    UsageDay,
)
from chat.templatetags.units import duration_ms

# The CSV export's columns, as exported (the admin's list shows the same figures).
USAGE_CSV_FIELDS = (
    "day",
    "user",
    "api_key",
    "widget",
    "slot_name",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "mean_ttft_ms",
)


@admin.register(UsageDay)
class UsageDayAdmin(ReadOnlyAdmin, admin.ModelAdmin[UsageDay]):
    """Usage per day, user, API key, widget and slot (``services.usage_arecord``), read-only,
    with a CSV export of the selected rows (or all the filtered ones: select all)."""

    # The CSV's columns, with the mean TTFT in readable units instead of raw ms.
    list_display = (*USAGE_CSV_FIELDS[:-1], "mean_ttft")
    list_filter = ("day", "slot_name")
    search_fields = ("user__username", "slot_name", "api_key__name", "widget__name")
    date_hierarchy = "day"
    list_select_related = ("user", "api_key", "widget")
    actions = ("export_csv",)

    # The dashboard's periods, days (the first is its default), and hours (UsageHour's rows).
    DASHBOARD_DAYS = (30, 7, 90)
    DASHBOARD_HOURS = (48,)

    def get_urls(self) -> list[URLPattern]:
        dashboard = path(
            "dashboard/",
            self.admin_site.admin_view(self.dashboard),
            name="chat_usageday_dashboard",
        )
        return [dashboard, *super().get_urls()]

    def dashboard(self, request: HttpRequest) -> HttpResponse:
        """Usage over the last 7, 30 or 90 days (``?days=``) or the last 48 hours (``?hours=48``,
        UTC): totals with TTFT and speed percentiles, tokens and requests per day or hour as
        bar charts, and the top users, API keys, widgets and slots. Read from the per-day or
        per-hour rows only (``selectors.usage_within``, ``selectors.usage_summary``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now, days, hours = timezone.now(), self.DASHBOARD_DAYS, self.DASHBOARD_HOURS
        period = charts.usage_period(request.GET, days=days, hours=hours, now=now)
        rows = selectors.usage_within(period=period)
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "opts": self.model._meta,
            "period": period,
            "periods": charts.period_choices(days=days, hours=hours, now=now),
            "total": selectors.usage_summary(rows, by=[])[0],
            "charts": charts.usage_charts(period, selectors.usage_summary(rows, by=[period.unit])),
            "tables": [
                (
                    heading,
                    label,
                    selectors.usage_summary(rows.filter(**only), by=by)[:DASHBOARD_TOP],
                )
                for heading, label, only, by in DASHBOARD_TABLES
            ],
        }
        return TemplateResponse(request, "admin/chat/usageday/dashboard.html", context)

    @admin.display(description="mean TTFT")
    def mean_ttft(self, row: UsageDay) -> str:
        return duration_ms(row.mean_ttft_ms)

    @admin.action(description="Export selected rows as CSV")
    def export_csv(self, request: HttpRequest, queryset: Any) -> HttpResponse:
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="slipstream-usage.csv"'
        writer = csv.writer(response)
        writer.writerow(USAGE_CSV_FIELDS)
        for row in queryset.select_related("user", "api_key", "widget"):
            writer.writerow(
                [
                    row.day.isoformat(),
                    row.user.get_username() if row.user else "",
                    row.api_key.name if row.api_key else "",
                    row.widget.name if row.widget else "",
                    row.slot_name,
                    row.requests,
                    row.errors,
                    row.prompt_tokens,
                    row.completion_tokens,
                    "" if row.mean_ttft_ms is None else round(row.mean_ttft_ms, 1),
                ]
            )
        return response


# Rows in each of the dashboard's top lists.
DASHBOARD_TOP = 20


# The dashboard's top lists: heading, first column's name, which rows, summed by what. A
# user's answers count for each of their groups.
DASHBOARD_TABLES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("Users", "User", {"user__isnull": False}, ["user__username"]),
    ("Groups", "Group", {"user__groups__isnull": False}, ["user__groups__name"]),
    ("API keys", "API key · user", {"api_key__isnull": False}, ["api_key__name", "user__username"]),
    ("Widgets", "Widget", {"widget__isnull": False}, ["widget__name"]),
    ("Slots", "Slot", {}, ["slot_name"]),
]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin[Quota]):
    """Token and request budgets per day or month for users, groups and API keys, enforced
    when each request is admitted, before its upstream call (``quotas.admit``)."""

    list_display = ("__str__", "period", "max_tokens", "max_requests")
    list_filter = ("period",)
    list_select_related = ("user", "group", "api_key")
    autocomplete_fields = ("user", "group")
    fields = ("user", "group", "api_key", "period", "max_tokens", "max_requests")


@admin.register(SignOnIdentity)
class SignOnIdentityAdmin(admin.ModelAdmin[SignOnIdentity]):
    """Which account at the single sign-on provider signs in as which user (``chat.sso``).
    Adding one links an existing local user to its provider account (the provider's ``sub``
    claim); deleting one makes the next sign-in with that account ask for a new user."""

    list_display = ("user", "subject", "issuer", "created_at", "last_login_at")
    search_fields = ("user__username", "subject")
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    readonly_fields = ("created_at", "last_login_at")
