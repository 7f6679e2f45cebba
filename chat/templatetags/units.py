"""Template filters that show measurements in readable units: ``{% load units %}``. An
unknown value shows as ``UNKNOWN`` (an en dash)."""

from __future__ import annotations

from django import template

register = template.Library()

UNKNOWN = "\u2013"


@register.filter
def duration_ms(value: float | None) -> str:
    """A duration given in ms, for people: ``UNKNOWN`` when None, "850 ms" under a second,
    "1.3 s" under a minute, "2 min 5 s" above."""
    if value is None:
        return UNKNOWN
    if value < 1000:
        return f"{value:.0f} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


@register.filter
def per_second(value: float | None) -> str:
    """A rate (tokens/s), for people: ``UNKNOWN`` when None, else rounded to a whole number (one
    decimal under 10)."""
    if value is None:
        return UNKNOWN
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"
