"""OpenAI's Codex CLI (npm ``@openai/codex``, pinned in tests/js/package.json), unmodified and
with its default features, in ``codex exec`` mode against Slipstream's ``/v1/responses`` on a
slot that translates to chat completions (the simulator upstream, scripted to call Codex's shell
tool). Codex's requests are what a coding agent sends: function tools beside a ``namespace``
tool and the hosted ``web_search``, ``store: false``, ``include:
["reasoning.encrypted_content"]``, and on a resumed session every earlier item sent back
again, since nothing was stored (OpenAI API reference, "Create a model response": ``store``,
``input``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chat import readcache
from chat.models import Backend, Slot
from chat.simulator import SimulatorThread
from tests.conftest import make_slot
from tests.support.daphne_server import DaphneServer

pytestmark = pytest.mark.django_db(transaction=True)

CODEX = Path(__file__).parents[1] / "js" / "node_modules" / ".bin" / "codex"
# Per run (s); both runs together take about 3 s here (the server starts in the setup).
TIMEOUT_S = 60

FIRST_TASK = "Write hi to hello.txt"
# The shell's arithmetic proves the command ran: its arguments never hold "written-42".
FIRST_COMMAND = "printf hi > hello.txt && echo written-$((6*7))"
SECOND_TASK = "Now say which turn this is"
SECOND_COMMAND = "echo turn-$((1+1))"


@pytest.fixture
def slot(transactional_db: None, sim: SimulatorThread) -> Slot:
    """The simulator's slot on a backend that translates Responses to chat completions."""
    made = make_slot(sim.base_url)
    Backend.objects.filter(pk=made.backend_id).update(responses_api="translate")
    readcache.invalidate()  # .update() sends no signal
    return made


@pytest.fixture
def codex_home(server: DaphneServer, tmp_path: Path) -> Path:
    """A CODEX_HOME whose config.toml points Codex at Slipstream's ``primary`` slot, with
    nothing that would wait on the internet (test machines have none): no update check, no
    analytics; and no retries, so a refused request fails the run at once instead of backing
    off."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f"""\
model = "primary"
model_provider = "slipstream"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.slipstream]
name = "Slipstream"
base_url = "{server.base_url}/v1"
env_key = "SLIPSTREAM_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
supports_websockets = false
"""
    )
    return home


def run_codex(home: Path, work: Path, api_key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``codex exec <args>`` in ``work``, stdin closed (else it waits for more prompt there)."""
    if not CODEX.exists():
        pytest.fail("the Codex CLI is missing: `make test` runs npm ci in tests/js")
    return subprocess.run(
        [str(CODEX), "exec", *args],
        cwd=work,
        # HOME too: Codex runs commands in a login shell (bash -lc), which reads the profile
        # there; the user's must not change what the test sees.
        env={
            **os.environ,
            "HOME": str(home.parent),
            "CODEX_HOME": str(home),
            "SLIPSTREAM_API_KEY": api_key,
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def position(messages: list[dict[str, Any]], start: int, **fields: Any) -> int:
    """The index of the first message from ``start`` on that has ``fields`` (a ``content``
    field matches as a substring); ``AssertionError`` when none has."""
    for index in range(start, len(messages)):
        message = messages[index]
        if all(
            str(value) in str(message.get(key)) if key == "content" else message.get(key) == value
            for key, value in fields.items()
        ):
            return index
    raise AssertionError(f"no message with {fields} from {start} on in {messages}")


def test_codex_runs_a_shell_command_and_resumes_the_session(
    slot: Slot, sim: SimulatorThread, api_key: str, codex_home: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sim.configure(
        ttft_ms=0,
        tokens_per_s=0,
        length=5,
        # Reasoning items go out to Codex and, with store false, come back in the next requests.
        reasoning_tokens=3,
        tool_name="exec_command",
        tool_arguments=json.dumps({"cmd": FIRST_COMMAND}),
    )
    answer_file = tmp_path / "first.txt"  # Codex writes its last message there (-o)
    first = run_codex(
        codex_home, work, api_key, "--skip-git-repo-check", "-o", str(answer_file), FIRST_TASK
    )
    assert first.returncode == 0, first.stderr
    assert (work / "hello.txt").read_text() == "hi"
    # The last upstream request of the turn answers the tool's result in words.
    messages = sim.stats()["last_request"]["messages"]
    (call,) = messages[-2]["tool_calls"]
    assert call["function"]["name"] == "exec_command"
    assert json.loads(call["function"]["arguments"]) == {"cmd": FIRST_COMMAND}
    assert messages[-1]["role"] == "tool"
    assert messages[-1]["tool_call_id"] == call["id"]
    assert "written-42" in messages[-1]["content"]
    tools = sim.stats()["last_request"]["tools"]
    assert {tool["type"] for tool in tools} == {"function"}  # all chat completions can carry
    first_answer = answer_file.read_text().strip()
    assert len(first_answer.split()) == 5

    sim.configure(tool_arguments=json.dumps({"cmd": SECOND_COMMAND}))
    second = run_codex(
        codex_home, work, api_key, "resume", "--last", "--skip-git-repo-check", SECOND_TASK
    )
    assert second.returncode == 0, second.stderr
    # store is false: Codex sent the first turn's items back, and they reached the chat
    # backend as messages, in order, before the second task and its own tool round trip.
    messages = sim.stats()["last_request"]["messages"]
    at = position(messages, 0, role="user", content=FIRST_TASK)
    at = position(messages, at + 1, role="assistant", tool_calls=[call])
    at = position(messages, at + 1, role="tool", tool_call_id=call["id"], content="written-42")
    at = position(messages, at + 1, role="assistant", content=first_answer)
    at = position(messages, at + 1, role="user", content=SECOND_TASK)
    at = position(messages, at + 1, role="tool", content="turn-2")
    assert at == len(messages) - 1
