"""The stdio MCP servers this deployment may start: ``SLIPSTREAM_MCP_STDIO_SERVERS``.

A stdio server runs a program on this machine, so its command line comes from the operator's
configuration, never from a web form (LibreChat's 2026 advisory: user-created stdio servers ran
arbitrary commands). The setting is JSON, or the path of a JSON file, of the shape::

    {"time": {"command": ["mcp-server-time", "--local-timezone", "UTC"], "env": {"TZ": "UTC"}}}

A server registered in the admin with transport ``stdio`` names one of these keys. Read at each
start (a file edited by the operator needs no restart); no Django.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Names an environment variable may have (POSIX portable names); anything else is refused so
# that ``env -i NAME=VALUE`` cannot read a value as a program.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class StdioConfigError(Exception):
    """The stdio servers' configuration cannot be read, or names no such server. The message
    names the setting and the server, never an environment value."""


@dataclass(frozen=True)
class StdioCommand:
    """How to start one stdio server: ``command`` is the argv (``command[0]`` found on PATH or
    absolute; never run through a shell); ``env`` the only variables it gets besides PATH."""

    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, hash=False)


def load(raw: str) -> dict[str, StdioCommand]:
    """The servers configured by ``raw`` (the setting's value: JSON starting with ``{``, a file
    path, or "" for none). Raises ``StdioConfigError`` for an unreadable file, bad JSON or an
    entry of the wrong shape."""
    text = raw.strip()
    if not text:
        return {}
    if not text.startswith("{"):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise StdioConfigError(
                f"SLIPSTREAM_MCP_STDIO_SERVERS: cannot read {text}: {exc.strerror}"
            ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StdioConfigError(f"SLIPSTREAM_MCP_STDIO_SERVERS is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StdioConfigError("SLIPSTREAM_MCP_STDIO_SERVERS must be a JSON object of servers")
    return {str(name): _command(str(name), entry) for name, entry in data.items()}


def lookup(raw: str, name: str) -> StdioCommand:
    """The configured server ``name``; ``StdioConfigError`` when there is none."""
    servers = load(raw)
    if name not in servers:
        raise StdioConfigError(
            f"the stdio server {name!r} is not configured in SLIPSTREAM_MCP_STDIO_SERVERS"
        )
    return servers[name]


def _command(name: str, entry: Any) -> StdioCommand:
    where = f"SLIPSTREAM_MCP_STDIO_SERVERS[{name!r}]"
    if not isinstance(entry, dict) or set(entry) - {"command", "env"}:
        raise StdioConfigError(f'{where} must be an object with "command" and optional "env"')
    command = entry.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(part, str) and part and "\0" not in part for part in command)
    ):
        raise StdioConfigError(f"{where}: command must be a non-empty list of strings (argv)")
    if "=" in command[0]:
        # env(1) would read it as a variable, not as the program.
        raise StdioConfigError(f"{where}: the program's name must not contain '='")
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) and "\0" not in v
        for k, v in env.items()
    ):
        raise StdioConfigError(f"{where}: env must map variable names to strings")
    return StdioCommand(command=tuple(command), env=dict(env))
