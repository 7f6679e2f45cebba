"""The usage pages' periods and bar charts (chat.charts): which days or hours (UTC) a query
asks for, and which bar a day's or hour's figures land on."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from chat.charts import UsagePeriod, bar_chart, period_choices, usage_charts, usage_period

NOW = datetime(2026, 3, 14, 14, 25, 7, tzinfo=UTC)
DAYS, HOURS = (30, 7, 90), (48,)


@pytest.mark.parametrize(
    ("query", "unit", "count"),
    [
        ({}, "day", 30),
        ({"days": "7"}, "day", 7),
        ({"hours": "48"}, "hour", 48),
        ({"hours": "48", "days": "7"}, "hour", 48),
        ({"hours": "5"}, "day", 30),  # not offered: the default, not an error
        ({"days": "-7"}, "day", 30),
        ({"days": "seven"}, "day", 30),
    ],
)
def test_the_query_picks_an_offered_period_else_the_default(query, unit, count) -> None:
    period = usage_period(query, days=DAYS, hours=HOURS, now=NOW)
    assert (period.unit, period.count) == (unit, count)


def test_hours_are_whole_utc_hours_ending_with_the_current_one() -> None:
    # The same instant in UTC+05:30: the hours are still UTC's.
    period = UsagePeriod("hour", 48, NOW.astimezone(timezone(timedelta(hours=5, minutes=30))))
    starts = period.starts()
    assert len(starts) == 48
    assert starts[-1] == datetime(2026, 3, 14, 14, tzinfo=UTC)
    assert starts[0] == datetime(2026, 3, 12, 15, tzinfo=UTC)
    assert period.since_label == "2026-03-12 15:00"
    assert (period.query, period.title) == ("hours=48", "Last 48 hours")
    pacific = datetime(2026, 3, 14, 6, tzinfo=timezone(timedelta(hours=-8)))
    assert period.label(pacific) == "2026-03-14 14:00"


def test_days_end_with_today_utc() -> None:
    period = UsagePeriod("day", 7, NOW)
    assert period.starts() == [date(2026, 3, 8) + timedelta(days=n) for n in range(7)]
    assert period.since_label == "2026-03-08"


def test_each_hour_gets_its_own_bar_and_hours_without_usage_are_zero() -> None:
    period = UsagePeriod("hour", 48, NOW)
    summed = [
        {"hour": datetime(2026, 3, 14, 14, tzinfo=UTC), "tokens": 30, "requests": 3},
        {"hour": datetime(2026, 3, 14, 12, tzinfo=UTC), "tokens": 60, "requests": 1},
        # Outside the period: not drawn.
        {"hour": datetime(2026, 3, 12, 14, tzinfo=UTC), "tokens": 999, "requests": 9},
    ]
    chart = bar_chart("Tokens per hour (UTC)", "tokens", period, summed)
    assert (chart["width"], chart["peak"]) == (480, 60)
    bars = chart["bars"]
    assert [bar["value"] for bar in bars[-3:]] == [60, 0, 30]
    assert (bars[-1]["label"], bars[-1]["height"], bars[-1]["y"]) == ("2026-03-14 14:00", 50, 50)
    assert (bars[-3]["height"], bars[-3]["x"]) == (100, 45 * 10 + 1)
    assert sum(bar["value"] for bar in bars) == 90
    titles = [chart["title"] for chart in usage_charts(period, summed)]
    assert titles == ["Tokens per hour (UTC)", "Requests per hour (UTC)"]


def test_an_empty_period_draws_flat_bars() -> None:
    chart = bar_chart("Requests per day", "requests", UsagePeriod("day", 30, NOW), [])
    assert chart["peak"] == 0
    assert {bar["height"] for bar in chart["bars"]} == {0}


def test_the_switch_offers_hours_first() -> None:
    offered = period_choices(days=DAYS, hours=HOURS, now=NOW)
    assert [p.query for p in offered] == ["hours=48", "days=7", "days=30", "days=90"]
