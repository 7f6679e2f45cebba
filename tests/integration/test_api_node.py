"""The official openai Node SDK (pinned in tests/js/package.json) against Slipstream: a chat
completion stream and a Responses API stream (both upstream paths)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS = Path(__file__).parents[1] / "js"

pytestmark = pytest.mark.django_db(transaction=True)


def run_node_client(
    base_url: str, api_key: str, script: str = "openai_stream.mjs"
) -> dict[str, Any]:
    if shutil.which("node") is None:
        pytest.fail("node is not installed")
    if not (JS / "node_modules" / "openai").exists():
        pytest.fail("the openai Node SDK is missing: `make test` runs npm ci in tests/js")
    done = subprocess.run(
        ["node", str(JS / script)],
        env={**os.environ, "SLIPSTREAM_BASE_URL": base_url + "/v1", "SLIPSTREAM_API_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_node_sdk_streams_a_chat_completion(server, slot, sim, api_key) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=200, length=9)
    result = run_node_client(server.base_url, api_key)
    assert "error" not in result, result
    assert len(set(result["ids"])) == 1
    assert result["ids"][0].startswith("chatcmpl-")
    assert set(result["models"]) == {"primary"}
    assert result["roles"] == ["assistant"]
    assert len(result["content"].split()) == 9
    assert result["finishReasons"] == ["stop"]
    assert result["usage"]["completion_tokens"] == 9
    assert result["modelIds"] == ["primary"]


def test_node_sdk_sees_a_bad_key_as_authentication_error(server, slot) -> None:
    result = run_node_client(server.base_url, "sk-slip-wrong")
    assert result["error"]["name"] == "AuthenticationError"
    assert result["error"]["status"] == 401


@pytest.mark.parametrize("mode", ["native", "translate"])
def test_node_sdk_streams_a_response(server, slot, sim, api_key, mode) -> None:
    from chat import readcache
    from chat.models import Backend

    Backend.objects.filter(pk=slot.backend_id).update(responses_api=mode)
    readcache.invalidate()
    sim.configure(ttft_ms=0, tokens_per_s=200, length=7)
    result = run_node_client(server.base_url, api_key, "openai_responses.mjs")
    assert "error" not in result, result
    assert result["types"][0] == "response.created"
    assert result["types"][-1] == "response.completed"
    assert result["sequenceNumbers"] == list(range(len(result["types"])))
    final = result["final"]
    assert final["id"].startswith("resp_")
    assert (final["model"], final["status"]) == ("primary", "completed")
    assert final["outputText"] == result["deltas"]
    assert len(final["outputText"].split()) == 7
    assert final["usage"]["output_tokens"] == 7
    assert result["retrievedText"] == final["outputText"]
