"""The browser's answer renderer, DOM-free half: node's tests (tests/js/answer.test.mjs), and
static/chat/delta.js agreeing with chat/relay/accumulate.py on every recorded stream, so what
the browser shows while streaming is what is stored."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chat.relay.accumulate import MessageAccumulator
from chat.relay.sse import SSEDecoder

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "sse").glob("*.sse"))
DUMP = ROOT / "tests" / "js" / "dump_answer.mjs"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def python_answer(raw: bytes) -> dict[str, Any]:
    """Choice 0's deltas folded by the server's accumulator (as dump_answer.mjs does in JS)."""
    decoder = SSEDecoder()
    accumulator = MessageAccumulator()
    for event in decoder.feed(raw) + decoder.flush():
        if event.event != "message" or event.data == "[DONE]":
            continue
        try:
            chunk = json.loads(event.data)
        except ValueError:
            continue
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0 and choice.get("delta"):
                accumulator.add({"choices": [{"index": 0, "delta": choice["delta"]}]})
    return {
        "content": accumulator.content(),
        # The browser drops the reasoning's leading blanks (they would show as an empty line).
        "reasoning": accumulator.reasoning().lstrip(),
        "tool_calls": [
            {"id": c["id"], "type": c["type"], "function": c["function"]}
            for c in accumulator.tool_calls()
        ],
    }


def js_answer(path: Path) -> dict[str, Any]:
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(DUMP), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_node_answer_tests() -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, "--test", "tests/js/answer.test.mjs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_browser_and_server_agree_on_fixture(path: Path) -> None:
    assert js_answer(path) == python_answer(path.read_bytes())
