"""The MCP client (``chat.tools.client``, issue 31) against real servers started here: tools
listed and called over stdio (mcp-server-time) and Streamable HTTP (server-everything); a server
that is down or never answers gives its own error, fast; the URL policy refuses the SSRF cases
before any connection; secrets and headers never reach a message or a log line; each call
leaves one audit line naming its user."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from chat.tools import client, config
from tests.support.mcp_servers import (
    EVERYTHING,
    DeadEnds,
    EverythingServer,
    stdio_servers_setting,
)

SECRET = "mcp-secret-5f0c9e1a7b"
HEADER_VALUE = "team-header-3d8a"
LOOPBACK = ("127.0.0.1",)


@pytest.fixture(scope="module")
def everything() -> Iterator[EverythingServer]:
    with EverythingServer() as srv:
        yield srv


def http_spec(url: str, **fields: Any) -> client.ServerSpec:
    return client.ServerSpec(
        label=fields.pop("label", "everything"),
        transport=client.HTTP,
        url=url,
        allow_hosts=fields.pop("allow_hosts", LOOPBACK),
        timeout_s=fields.pop("timeout_s", 10.0),
        **fields,
    )


def time_spec() -> client.ServerSpec:
    return client.ServerSpec(
        label="time",
        transport=client.STDIO,
        stdio=config.lookup(stdio_servers_setting(), "time"),
        timeout_s=30.0,
    )


async def test_stdio_server_lists_and_calls_its_tools(caplog: pytest.LogCaptureFixture) -> None:
    tools = await client.list_tools(time_spec())
    by_name = {t.name: t for t in tools}
    assert {"get_current_time", "convert_time"} <= set(by_name)
    assert by_name["get_current_time"].input_schema["type"] == "object"
    assert "timezone" in by_name["get_current_time"].description.lower()

    user = SimpleNamespace(pk=41, username="ada")
    with caplog.at_level(logging.INFO, logger="chat.tools.audit"):
        result = await client.call_tool(
            time_spec(), "get_current_time", {"timezone": "Asia/Tokyo"}, user=user
        )
    assert not result.is_error
    assert json.loads(result.text)["timezone"] == "Asia/Tokyo"
    assert result.duration_ms > 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "chat.tools.audit"]
    assert "user_id=41 user=ada server=time tool='get_current_time'" in line
    assert "outcome=ok" in line
    assert "Asia/Tokyo" not in line  # never the arguments


async def test_another_stdio_server_lists_its_tools() -> None:
    spec = client.ServerSpec(
        label="fetch",
        transport=client.STDIO,
        stdio=config.StdioCommand((sys.executable, "-m", "mcp_server_fetch")),
        timeout_s=30.0,
    )
    (fetch,) = await client.list_tools(spec)
    assert fetch.name == "fetch"
    assert "url" in fetch.input_schema["properties"]


async def test_stdio_server_gets_only_its_configured_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Slipstream's own environment (a stand-in for its secret key here, HOME and USER that the
    # SDK would pass on) must not reach the child: the configured variables and PATH only.
    # server-everything's get-env tool shows the environment it was started with.
    monkeypatch.setenv("DJANGO_SECRET_KEY", "must-not-leak")
    node = shutil.which("node")
    assert node is not None
    spec = client.ServerSpec(
        label="everything-stdio",
        transport=client.STDIO,
        stdio=config.StdioCommand(
            (node, str(EVERYTHING / "index.js"), "stdio"), env={"MCP_TEST_VAR": "configured"}
        ),
        timeout_s=30.0,
    )
    result = await client.call_tool(spec, "get-env", {})
    env = json.loads(result.text)
    assert env["MCP_TEST_VAR"] == "configured"
    assert "PATH" in env
    assert "must-not-leak" not in result.text
    assert not {"DJANGO_SECRET_KEY", "HOME", "USER", "SHELL"} & set(env)


async def test_http_server_lists_and_calls_its_tools(everything: EverythingServer) -> None:
    spec = http_spec(everything.url, secret=SECRET, headers={"X-Team": HEADER_VALUE})
    names = [t.name for t in await client.list_tools(spec)]
    assert {"echo", "get-sum", "get-tiny-image"} <= set(names)

    echoed = await client.call_tool(spec, "echo", {"message": "hello"})
    assert echoed.text == "Echo: hello"
    assert not echoed.is_error
    summed = await client.call_tool(spec, "get-sum", {"a": 2, "b": 40})
    assert "42" in summed.text


async def test_non_text_content_is_described_and_long_output_cut(
    everything: EverythingServer,
) -> None:
    spec = http_spec(everything.url)
    image = await client.call_tool(spec, "get-tiny-image", {})
    assert "[image: image/png," in image.text
    assert "iVBOR" not in image.text  # the base64 data is not passed on

    long = await client.call_tool(spec, "echo", {"message": "x" * 500}, max_chars=100)
    assert long.truncated
    assert long.text.startswith("Echo: " + "x" * 94)
    assert "406 more characters cut" in long.text


async def test_unknown_tool_is_an_error_either_way(everything: EverythingServer) -> None:
    # Servers differ: the TypeScript SDK's answers with a result marked isError (for the model
    # to read), the Python SDK's with a JSON-RPC error (an exception here).
    result = await client.call_tool(http_spec(everything.url), "no-such-tool", {})
    assert result.is_error
    assert "no-such-tool" in result.text
    with pytest.raises(client.McpToolError, match="MCP server time refused the call: Unknown"):
        await client.call_tool(time_spec(), "no-such-tool", {})


async def test_a_server_that_is_down_is_unreachable_at_once() -> None:
    with DeadEnds() as ends:
        started = time.monotonic()
        with pytest.raises(client.McpUnreachable, match="MCP server down is unreachable"):
            await client.list_tools(
                http_spec(f"http://127.0.0.1:{ends.refusing}/mcp", label="down")
            )
        assert time.monotonic() - started < 3


async def test_a_server_that_never_answers_times_out_on_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with DeadEnds() as ends, caplog.at_level(logging.INFO, logger="chat.tools.audit"):
        started = time.monotonic()
        with pytest.raises(client.McpTimeout, match="did not answer within 1 s"):
            await client.call_tool(
                http_spec(f"http://127.0.0.1:{ends.silent}/mcp", label="hang"),
                "echo",
                {},
                timeout_s=1.0,
                user=SimpleNamespace(pk=7, username="eve"),
            )
        assert time.monotonic() - started < 4
    (line,) = [r.getMessage() for r in caplog.records if r.name == "chat.tools.audit"]
    assert "user_id=7 user=eve server=hang tool='echo'" in line
    assert line.endswith("outcome=timeout")


async def test_a_stdio_program_that_is_missing_cannot_be_started() -> None:
    spec = client.ServerSpec(
        label="ghost",
        transport=client.STDIO,
        stdio=config.StdioCommand(("/nonexistent/mcp-server",)),
        timeout_s=10,
    )
    with pytest.raises(client.McpError, match="MCP server ghost"):
        await client.list_tools(spec)


SSRF = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]:8310/mcp",
    "http://2130706433/mcp",
    "http://localhost:8310/mcp",
    "http://0177.0.0.1/mcp",
    "http://10.0.0.5/mcp",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
]


@pytest.mark.parametrize("url", SSRF)
async def test_ssrf_urls_are_refused_before_connecting(url: str) -> None:
    # Without the operator's list: loopback is refused like the rest.
    with pytest.raises(client.McpRefusedUrl, match="refused to connect"):
        await client.list_tools(http_spec(url, allow_hosts=()))


async def test_only_the_listed_host_skips_the_address_check(everything: EverythingServer) -> None:
    listed = http_spec(everything.url, allow_hosts=("127.0.0.1",))
    assert await client.list_tools(listed)
    # The same server by another name of the same address is not listed.
    other = everything.url.replace("127.0.0.1", "localhost")
    with pytest.raises(client.McpRefusedUrl, match="not a public address"):
        await client.list_tools(http_spec(other, allow_hosts=("127.0.0.1",)))


class Echoing(BaseHTTPRequestHandler):
    """Answers every request with a JSON-RPC error that repeats its credentials, as a hostile
    or careless server might, or a redirect to the metadata address for /redirect."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.startswith("/redirect"):
            self.send_response(307)
            self.send_header("Location", "http://169.254.169.254/mcp")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        told = f"bad credentials {self.headers['Authorization']} {self.headers['X-Team']}"
        error = {"code": -32001, "message": told}
        reply = json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "error": error}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echoing() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echoing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


async def test_secrets_never_reach_errors_or_logs(
    echoing: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = http_spec(
        f"{echoing}/mcp?token={SECRET}x", secret=SECRET, headers={"X-Team": HEADER_VALUE}
    )
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(client.McpError) as listed:
            await client.list_tools(spec)
        with pytest.raises(client.McpError) as called:
            await client.call_tool(spec, "echo", {"message": "hi"}, user=None)
    for exc in (listed.value, called.value):
        message = str(exc)
        assert message.startswith("MCP server everything")
        assert SECRET not in message
        assert HEADER_VALUE not in message
    # The server did repeat them: the scrubbing, not the server's manners, kept them out.
    assert "[redacted]" in str(listed.value)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert SECRET not in logged
    assert HEADER_VALUE not in logged


async def test_a_redirect_off_the_server_is_not_followed(echoing: str) -> None:
    spec = http_spec(f"{echoing}/redirect")
    with pytest.raises(client.McpError) as failed:
        await client.list_tools(spec)
    # The SDK follows only redirects within the endpoint's origin (each request, those
    # included, is checked again by the URL policy): this one is reported, not followed.
    assert "Redirect to http://169.254.169.254/mcp not followed" in str(failed.value)


class ListedOnce(tuple[str, ...]):
    """An allow list whose answer changes after the first look, as a DNS answer may between
    the check before connecting and the requests that follow."""

    looked = False

    def __iter__(self) -> Iterator[str]:
        if self.looked:
            return iter(())
        self.looked = True
        return super().__iter__()


async def test_every_request_is_checked_again(everything: EverythingServer) -> None:
    spec = http_spec(everything.url, allow_hosts=ListedOnce(LOOPBACK))
    with pytest.raises(client.McpRefusedUrl, match=r"127\.0\.0\.1 is not a public address"):
        await client.list_tools(spec)
