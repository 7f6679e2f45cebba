"""How the simulated model behaves: ``SimConfig``, and the type check that lets a request
override any of its fields (a ``"sim"`` object in the body or an ``x-sim-config`` header).

The fields' protocol terms (chunked coding, close-delimited bodies, SSE events) are those of the
sources listed in ``planning.py`` and ``http.py``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The recorded real streams that ``SimConfig.replay`` names a file of.
DEFAULT_REPLAY_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sse"


@dataclass
class SimConfig:
    """How the simulated model behaves. Server-wide defaults live in ``Simulator.config``; every
    field can be overridden per request by a ``"sim": {...}`` object in the JSON body (the
    OpenAI SDK's ``extra_body``) or an ``x-sim-config: <json>`` header (the body wins).

    "Tokens" are paced steps: reasoning words, content words and tool-argument fragments, one
    per choice per step; the ``*_after`` faults fire once that many steps have been written.
    """

    ttft_ms: float = 50  # time to first token, from the request (ms); headers go out at once
    tokens_per_s: float = 50  # pacing per choice; 0 = as fast as possible
    max_tokens_default: int = 64  # answer length (tokens) when nothing else decides it
    length: int | None = None  # force the answer length (tokens); max_tokens still caps it
    reasoning_tokens: int = 0  # emit this many ``delta.reasoning_content`` words first
    tool_call: bool = False  # answer with one tool call (also when the request has ``tools``)
    tool_name: str | None = None  # that call's function: the offered tool of this name (the
    # first offered when none has it, as when this is None)
    tool_arguments: str | None = None  # that call's arguments JSON text, verbatim (streamed in
    # fragments), instead of arguments made up to fit the tool's parameter schema
    error_after: int | None = None  # after N tokens: one ``data: {"error": ...}`` event, end
    drop_after: int | None = None  # after N tokens: close TCP, no terminating chunk
    malformed_after: int | None = None  # after N tokens: one non-JSON ``data:`` line
    stall_after: int | None = None  # after N tokens: send nothing for ``stall_s``
    stall_s: float = 5.0  # length of that stall (s)
    cold_boot_s: float = 0  # 503 "Loading model" for this long after start / configure()
    fail_requests: int = 0  # the next N completion requests answer ``fail_status`` (set by
    # configure(), which starts the count; a per-request override has no effect)
    fail_status: int = 502  # the HTTP status of those failures (502, 503, 504, 500, 429, ...)
    fail_with: str = "status"  # how those requests fail: "status" (answer fail_status),
    # "reset" (close with a TCP RST, no answer) or "close" (close with a FIN, no answer)
    close_delimited: bool = False  # stream without chunked coding or Content-Length: the body
    # ends when the connection closes (RFC 9112 §6.3), so a drop looks like a clean end
    usage_json: str | None = None  # the usage object, replaced by this JSON text verbatim
    inject_after: int | None = None  # after N tokens: one extra ``data: <inject_data>`` event
    inject_data: str = ""  # that event's data, verbatim (a chunk with bad values, say)
    ignore_stop: bool = False  # ignore the request's ``stop`` strings (else content is cut)
    replay: str | None = None  # stream this replay-dir file verbatim (always streamed, paced
    # per event; the request's n, max_tokens and stop are ignored)
    responses_api: bool = True  # serve POST /v1/responses natively; False answers 404 there,
    # as servers without the Responses API do (llama-cpp-python's, older vLLM and Ollama)
    keepalive_comment_s: float = 0  # ``: ping`` interval (s) during the TTFT wait and stalls
    tokenize: bool = True  # serve POST /tokenize (llama.cpp's and vLLM's tokenizer endpoint:
    # one token per word, as usage counts them); False answers 404 there, as OpenAI and Ollama do
    tokenize_delay_ms: float = 0  # answer /tokenize after this long (ms): a slow tokenizer
    tokenize_as: str = "vllm"  # /tokenize's dialect: "vllm" (messages counted whole, with
    # count and max_model_len) or "llama.cpp" (the content's text alone: tokens)
    vision: bool | None = None  # say whether the model reads images, as llama.cpp's server
    # (GET /props: modalities.vision) and Ollama (POST /api/show: capabilities) do; None: 404
    # there, as servers that do not say (vLLM)

    def merged(self, overrides: Mapping[str, Any]) -> SimConfig:
        """A copy with ``overrides`` applied; ``ValueError`` names an unknown or mistyped field."""
        return dataclasses.replace(self, **{k: _check_field(k, v) for k, v in overrides.items()})


_FIELD_TYPES = typing.get_type_hints(SimConfig)


def _check_field(name: str, value: Any) -> Any:
    hint = _FIELD_TYPES.get(name)
    if hint is None:
        raise ValueError(f"unknown simulator setting {name!r}")
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        ok = type(None) in allowed
    elif isinstance(value, bool):  # bool is an int: check it first
        ok = bool in allowed
    elif isinstance(value, int):
        ok = int in allowed or float in allowed
    else:
        ok = type(value) in allowed
    if not ok:
        raise ValueError(f"bad value for simulator setting {name!r}: {value!r}")
    return value
