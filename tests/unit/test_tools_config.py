"""``SLIPSTREAM_MCP_STDIO_SERVERS`` (chat.tools.config, issue 31): JSON inline or in a file the
operator owns; argv lists only (never a shell line); environment names checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat.tools import config

TIME = {"time": {"command": ["mcp-server-time", "--local-timezone", "UTC"], "env": {"TZ": "UTC"}}}


def test_inline_json_and_a_file_give_the_same_servers(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(TIME))
    inline = config.load(json.dumps(TIME))
    assert inline == config.load(str(path))
    assert inline["time"].command == ("mcp-server-time", "--local-timezone", "UTC")
    assert inline["time"].env == {"TZ": "UTC"}
    assert config.load("") == {}


def test_a_server_not_configured_is_named() -> None:
    with pytest.raises(config.StdioConfigError, match="'fetch' is not configured"):
        config.lookup(json.dumps(TIME), "fetch")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"command": "mcp-server-time --local-timezone UTC"}, "list of strings"),
        ({"command": []}, "list of strings"),
        ({"command": ["a\0b"]}, "list of strings"),
        ({"command": ["X=1", "prog"]}, "must not contain '='"),
        ({"command": ["prog"], "env": {"BAD NAME": "x"}}, "variable names"),
        ({"command": ["prog"], "env": {"OK": 1}}, "variable names"),
        ({"command": ["prog"], "shell": True}, '"command" and optional "env"'),
    ],
)
def test_malformed_entries_are_refused(entry: object, message: str) -> None:
    with pytest.raises(config.StdioConfigError, match=message):
        config.load(json.dumps({"x": entry}))


def test_unreadable_settings_say_why(tmp_path: Path) -> None:
    with pytest.raises(config.StdioConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.json"))
    with pytest.raises(config.StdioConfigError, match="not valid JSON"):
        config.load("{nope")
