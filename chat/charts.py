"""The usage pages' periods and bar charts (the user's usage page and the admin's dashboard):
which span a page shows (the last N days, or the last N hours, UTC) and the server-rendered
SVG bars of a summed series. No database and no HTML: the pages' templates draw the bars as
``<rect>`` shapes, with no script and no inline style (the site's Content-Security-Policy)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class UsagePeriod:
    """The last ``count`` days or hours (``unit``), UTC, the current one included, as of
    ``now`` (aware). ``unit`` is also the usage rows' field that holds a row's period
    (``UsageDay.day``, ``UsageHour.hour``)."""

    unit: Literal["day", "hour"]
    count: int
    now: datetime

    @property
    def hourly(self) -> bool:
        return self.unit == "hour"

    @property
    def since(self) -> date | datetime:
        """The first period's start: a date, or an aware datetime on the hour (UTC)."""
        return self.starts()[0]

    @property
    def since_label(self) -> str:
        """The first period's start as ``label`` writes it."""
        return self.label(self.since)

    @property
    def query(self) -> str:
        """The query string that asks for this period: ``hours=48``, ``days=30``."""
        return f"{self.unit}s={self.count}"

    @property
    def title(self) -> str:
        """``Last 48 hours``, ``Last 30 days``."""
        return f"Last {self.count} {self.unit}s"

    def starts(self) -> list[date | datetime]:
        """Each period's start, oldest first: ``count`` dates, or ``count`` aware datetimes
        an hour apart (UTC), the last the current day's or hour's."""
        utc = self.now.astimezone(UTC)
        if self.hourly:
            hour = utc.replace(minute=0, second=0, microsecond=0)
            return [hour - timedelta(hours=n) for n in range(self.count - 1, -1, -1)]
        today = utc.date()
        return [today - timedelta(days=n) for n in range(self.count - 1, -1, -1)]

    def label(self, start: date | datetime) -> str:
        """A period's start as the pages show it: ``2026-12-08``, or ``2026-12-08 14:00`` (an
        hour's, in UTC whatever ``start``'s zone)."""
        if isinstance(start, datetime):
            return hour_label(start)
        return start.isoformat()


def hour_label(start: datetime) -> str:
    """An hour's start (aware) as the pages show it, in UTC: ``2026-12-08 14:00``."""
    return f"{start.astimezone(UTC):%Y-%m-%d %H:00}"


def period_choices(
    *, days: tuple[int, ...], hours: tuple[int, ...], now: datetime
) -> list[UsagePeriod]:
    """The periods a page offers, for its switch: the hours' first (shortest first), then the
    days'."""
    return [UsagePeriod("hour", n, now) for n in sorted(hours)] + [
        UsagePeriod("day", n, now) for n in sorted(days)
    ]


def usage_period(
    params: Mapping[str, str], *, days: tuple[int, ...], hours: tuple[int, ...], now: datetime
) -> UsagePeriod:
    """The period a page's query asks for: ``?hours=N`` with N one of ``hours``, else
    ``?days=N`` with N one of ``days``, else the first of ``days`` (the default). Anything else
    (a number not offered, not a number) falls back to the default, never an error: these are
    links the pages make."""
    asked = params.get("hours", "")
    if asked.isdigit() and int(asked) in hours:
        return UsagePeriod("hour", int(asked), now)
    asked = params.get("days", "")
    count = int(asked) if asked.isdigit() and int(asked) in days else days[0]
    return UsagePeriod("day", count, now)


def bar_chart(
    title: str, field: str, period: UsagePeriod, summed: list[dict[str, Any]]
) -> dict[str, Any]:
    """One bar per day or hour of ``period`` from ``summed`` (``selectors.usage_summary``'s
    rows by ``period.unit``; a period without a row is 0): ``{"title", "peak", "width",
    "bars": [{"label", "value", "x", "y", "height"}]}``, ``label`` as ``period.label``, heights
    in the chart's 100-unit-high viewBox, 10 units of width per bar."""
    by_start = {row[period.unit]: row[field] for row in summed}
    values = [by_start.get(start, 0) or 0 for start in period.starts()]
    peak = max(values, default=0)
    bars = []
    for i, (start, value) in enumerate(zip(period.starts(), values, strict=True)):
        height = round(100 * value / peak, 2) if peak else 0
        bars.append(
            {
                "label": period.label(start),
                "value": value,
                "x": i * 10 + 1,
                "y": round(100 - height, 2),
                "height": height,
            }
        )
    return {"title": title, "peak": peak, "width": len(values) * 10, "bars": bars}


def usage_charts(period: UsagePeriod, summed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The usage pages' two charts of ``summed`` over ``period``: tokens (prompt and
    completion) and requests per day, or per hour (UTC)."""
    unit = "hour (UTC)" if period.hourly else "day"
    return [
        bar_chart(f"Tokens per {unit}", "tokens", period, summed),
        bar_chart(f"Requests per {unit}", "requests", period, summed),
    ]
