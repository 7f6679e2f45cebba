"""What the admin's pages share: the site's titles, ``ReadOnlyAdmin`` for records nobody edits
by hand, ``in_units`` for list columns with units."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest


def in_units(field: str, description: str, show: Callable[[Any], str]) -> Any:
    """A list or detail column showing ``field`` for people (``chat.templatetags.units``),
    sortable by the field itself."""

    @admin.display(description=description, ordering=field)
    def column(admin_: Any, obj: Any) -> str:
        return show(getattr(obj, field))

    return column


admin.site.site_header = "Slipstream"


admin.site.site_title = "Slipstream admin"


admin.site.index_title = "Administration"


class ReadOnlyAdmin:
    """For records the app writes and staff only read (and may delete): no add, no change."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
