"""What an upstream says of its model's abilities, where it says it. No ORM, no HTTP framing of
its own: plain JSON calls through ``upstream.request_json``.

- llama.cpp's server: ``GET /props`` → ``{"modalities": {"vision": bool, "audio": bool}}``
  (tools/server/README.md, "GET /props").
- Ollama: ``POST /api/show {"model": name}`` → ``{"capabilities": ["completion", "vision", …]}``
  (docs/api.md, "Show Model Information").

vLLM and OpenAI's ``/v1/models`` say nothing of modalities: the answer is then unknown.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chat.relay.errors import RelayError

# A probe, not an answer: a server that takes longer than this to say what it is says nothing.
from chat.relay.types import BackendConfig
from chat.relay.upstream import request_json

PROBE_TIMEOUT_S = 10.0


def _server_root(backend: BackendConfig) -> BackendConfig:
    """The same server addressed at its root: these endpoints are not under ``/v1``."""
    root = backend.base_url.rstrip("/").removesuffix("/v1")
    return dataclasses.replace(
        backend, base_url=root, read_timeout_s=PROBE_TIMEOUT_S, total_timeout_s=PROBE_TIMEOUT_S
    )


async def reads_images(backend: BackendConfig, model: str) -> tuple[bool | None, str]:
    """Whether ``model`` on ``backend`` reads images, as the server says: ``(said, where)``,
    ``where`` naming the endpoint that said it; ``(None, "")`` when no endpoint says (not
    llama.cpp's server nor Ollama, unreachable, or an answer of another shape). Never raises."""
    root = _server_root(backend)
    probes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/props", None),
        ("POST", "/api/show", {"model": model}),
    ]
    for method, path, body in probes:
        try:
            answer = await request_json(root, method, path, body)
        except RelayError:
            continue
        said = _vision(answer)
        if said is not None:
            return said, f"{method} {path}"
    return None, ""


def _vision(answer: Any) -> bool | None:
    if not isinstance(answer, dict):
        return None
    modalities = answer.get("modalities")
    vision = modalities.get("vision") if isinstance(modalities, dict) else None
    if isinstance(vision, bool):
        return vision
    capabilities = answer.get("capabilities")
    if isinstance(capabilities, list):
        return "vision" in capabilities
    return None
