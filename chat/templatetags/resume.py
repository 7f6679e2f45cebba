"""What a page needs to go on with an answer still streaming: ``{% load resume %}``."""

from __future__ import annotations

import json

from django import template

from chat import services
from chat.models import Message

register = template.Library()


@register.filter
def resume_delta(message: Message) -> str:
    """``services.resume_delta(message)`` as JSON text (for a ``data-`` attribute, which the
    template escapes), or "" when the page must read the answer from its first chunk."""
    delta = services.resume_delta(message)
    return "" if delta is None else json.dumps(delta)
