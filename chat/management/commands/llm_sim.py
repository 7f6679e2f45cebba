"""``python manage.py llm_sim``: the built-in simulator in the foreground (same flags as
``python -m chat.simulator``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from chat.simulator.__main__ import add_arguments as add_simulator_arguments
from chat.simulator.__main__ import run


class Command(BaseCommand):
    help = "Run the built-in OpenAI-compatible simulator (a test upstream, not a model)."

    def add_arguments(self, parser: CommandParser) -> None:
        add_simulator_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        run(options)
