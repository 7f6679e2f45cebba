from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chat.relay.sse import ServerSentEvent, SSEDecoder

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "sse").glob("*.sse"))
DUMP = ROOT / "tests" / "js" / "dump_events.mjs"
NODE = shutil.which("node")

# Inputs where the rules are easy to get subtly wrong, beyond what the fixtures hold.
EDGE_CASES = {
    "bom-cr-crlf": b"\xef\xbb\xbfdata: a\r\n\r\ndata: b\rdata: c\r\r",
    "fields": b"id: 1\nid: a\0b\nevent: e\nretry: 12\ndata: x\n\nretry: 1a\ndata: y\n\n",
    "odd-lines": b"data\n\ndata:\n\ndata:  two\n\nevent\ndata: z\n\nevent:\ndata: w\n\n",
    "comments-unknown": b": c\n\nfoo: bar\n:\ndata: a\n\n",
    "invalid-utf8": b"data: \xff\xfe ok\n\ndata: \xf0\x9f\x98 cut\n\ndata: \xed\xa0\x80 lone\n\n",
    "unicode-breaks": "data: a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\n\n".encode(),
    "non-ascii-digits": "retry: \u0661\u0662\ndata: a\n\nretry: \u00b2\ndata: b\n\n".encode(),
    "double-bom": b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n",
    "unterminated": b"data: a\ndata: b",
    "done-one-newline": b'data: {"a":1}\n\ndata: [DONE]\n',
    "cut-character-at-eof": b"data: a\xf0\x9f",
    "partial-bom-only": b"\xef\xbb",
    "id-persistence": b"id: 5\n\ndata: a\n\nid\ndata: b\n\n",
}


def python_events(raw: bytes) -> list[dict[str, object]]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = decoder.feed(raw) + decoder.flush()
    return [dataclasses.asdict(event) for event in events]


def js_events(path: Path, chunk_size: int | None = None) -> list[dict[str, object]]:
    assert NODE is not None
    args = [NODE, str(DUMP), str(path), *([str(chunk_size)] if chunk_size else [])]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    events: list[dict[str, object]] = json.loads(result.stdout)
    return events


@pytest.fixture
def node() -> str:
    if NODE is None:
        pytest.skip("node is not installed")
    return NODE


def test_node_test_suite(node: str) -> None:
    result = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr


@pytest.mark.usefixtures("node")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_js_and_python_agree_on_fixture(path: Path) -> None:
    expected = python_events(path.read_bytes())
    assert expected
    assert js_events(path) == expected


@pytest.mark.usefixtures("node")
@pytest.mark.parametrize("name", EDGE_CASES)
def test_js_and_python_agree_on_edge_case(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.sse"
    path.write_bytes(EDGE_CASES[name])
    expected = python_events(EDGE_CASES[name])
    assert js_events(path) == expected
    assert js_events(path, chunk_size=1) == expected
