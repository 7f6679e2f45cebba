"""Settings for ``bench/middleware_floor.py``: Slipstream's own, with ``MIDDLEWARE`` taken from
``$BENCH_MIDDLEWARE`` (comma-separated dotted paths; empty for none) and one more URL,
``/bench/empty/``, an async view that returns a 2-byte response."""

from __future__ import annotations

import os

from chatsite.settings import *  # noqa: F403

MIDDLEWARE = [m for m in os.environ.get("BENCH_MIDDLEWARE", "").split(",") if m]
ROOT_URLCONF = "urls"
