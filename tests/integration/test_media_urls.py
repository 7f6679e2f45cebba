"""Remote URLs in ``/v1`` content parts (issue 33, finding 3), through the official openai SDK:
a model server that fetches image URLs itself (vLLM does) must not be made to fetch this
network's own addresses. Each slot says which URLs go upstream (``Slot.media_urls``): public
http(s) addresses only (the default), or none but ``data:``; hosts the operator lists in
``SLIPSTREAM_MEDIA_URL_ALLOW_HOSTS`` (``images.internal`` for the test server,
``tests.conftest.server_env``) skip the address check. A refused URL is a 400 naming its part,
and the upstream never sees the request.

The machine running the tests has no DNS for the internet: the public address is a literal
(93.184.215.14, a global unicast address; nothing fetches it), and the names used resolve
locally (``localhost``, numeric forms) or not at all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat.models import Backend, Slot
from tests.conftest import make_slot

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = "https://93.184.215.14/cat.png"
ALLOWED = "http://images.internal/cat.png"
DATA = "data:image/png;base64,iVBORw0KGgo="

# The finding's URLs, then other spellings of the same addresses and tricks on URL parsers.
REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]:8310/",
    "http://2130706433/",
    "http://localhost:8310/cat.png",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://10.0.0.5/cat.png",
    "http://[fe80::1]/",
    "http://[2002:7f00:1::]/",
    "http://images.internal@127.0.0.1/",
    "http://127.0.0.1\\@93.184.215.14/",
    "ftp://93.184.215.14/cat.png",
    "//127.0.0.1/cat.png",
    "http://no-such-host.invalid/cat.png",
]


def chat_image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def chat_file(url: str) -> dict[str, Any]:
    return {"type": "file", "file": {"file_data": url, "filename": "cat.pdf"}}


def input_image(url: str) -> dict[str, Any]:
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def input_file(url: str) -> dict[str, Any]:
    return {"type": "input_file", "file_url": url}


# (part, where its URL is within the part, the error code of a refusal)
CHAT_PARTS = [
    (chat_image, "image_url.url", "invalid_image_url"),
    (chat_file, "file.file_data", "invalid_file_url"),
]
RESPONSES_PARTS = [
    (input_image, "image_url", "invalid_image_url"),
    (input_file, "file_url", "invalid_file_url"),
]


@pytest.fixture
def vision_slot(transactional_db: None, sim: Any) -> Slot:
    return make_slot(sim.base_url, accepts_images=True)


def ask_chat(client: Any, part: dict[str, Any], *, stream: bool = False) -> Any:
    content = [{"type": "text", "text": "What is this?"}, part]
    return client.chat.completions.create(
        model="primary", messages=[{"role": "user", "content": content}], stream=stream
    )


def ask_responses(client: Any, part: dict[str, Any]) -> Any:
    content = [{"type": "input_text", "text": "What is this?"}, part]
    return client.responses.create(model="primary", input=[{"role": "user", "content": content}])


@pytest.mark.parametrize("url", REFUSED)
@pytest.mark.parametrize(("make", "field", "code"), CHAT_PARTS)
def test_chat_completions_refuse_urls_to_this_network(
    vision_slot, sim, openai_client, url: str, make: Any, field: str, code: str
) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        ask_chat(openai_client, make(url))
    assert refused.value.status_code == 400
    assert refused.value.code == code
    assert refused.value.param == f"messages[0].content[1].{field}"
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("url", REFUSED)
@pytest.mark.parametrize(("make", "field", "code"), RESPONSES_PARTS)
def test_responses_refuse_urls_to_this_network(
    vision_slot, sim, openai_client, url: str, make: Any, field: str, code: str
) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        ask_responses(openai_client, make(url))
    assert refused.value.code == code
    assert refused.value.param == f"input[0].content[1].{field}"
    assert sim.stats()["requests"] == 0


def test_a_refusal_says_why(vision_slot, sim, openai_client) -> None:
    import openai

    reasons = {
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is not a public address",
        "http://2130706433/": "resolves to 127.0.0.1, which is not a public address",
        "file:///etc/passwd": "'file' URLs are not allowed",
        "http://no-such-host.invalid/cat.png": "could not be resolved",
    }
    for url, reason in reasons.items():
        with pytest.raises(openai.BadRequestError) as refused:
            ask_chat(openai_client, chat_image(url), stream=True)
        assert reason in refused.value.message
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("url", [PUBLIC, ALLOWED, DATA, "HTTPS://[::ffff:93.184.215.14]/cat.png"])
@pytest.mark.parametrize(("make", "field", "code"), CHAT_PARTS)
def test_chat_completions_pass_public_allowed_and_data_urls(
    vision_slot, sim, openai_client, url: str, make: Any, field: str, code: str
) -> None:
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    reply = ask_chat(openai_client, make(url))
    assert reply.choices[0].message.content
    assert sim.stats()["last_request"]["messages"][0]["content"][1] == make(url)


@pytest.mark.parametrize("url", [PUBLIC, ALLOWED, DATA])
@pytest.mark.parametrize(("make", "field", "code"), RESPONSES_PARTS)
@pytest.mark.parametrize("path", ["native", "translate"])
def test_responses_pass_public_allowed_and_data_urls(
    vision_slot, sim, openai_client, url: str, make: Any, field: str, code: str, path: str
) -> None:
    Backend.objects.update(responses_api=path)
    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    response = ask_responses(openai_client, make(url))
    assert response.status == "completed"
    assert url in json.dumps(sim.stats()["last_request"])


def test_a_slot_without_remote_urls_takes_only_data_urls(vision_slot, sim, openai_client) -> None:
    import openai

    vision_slot.media_urls = Slot.MediaUrls.NONE
    vision_slot.save()
    for url in (PUBLIC, ALLOWED):
        with pytest.raises(openai.BadRequestError) as chat_refused:
            ask_chat(openai_client, chat_image(url))
        assert chat_refused.value.code == "invalid_image_url"
        assert "takes no remote URLs" in chat_refused.value.message
        with pytest.raises(openai.BadRequestError) as responses_refused:
            ask_responses(openai_client, input_file(url))
        assert responses_refused.value.param == "input[0].content[1].file_url"
    assert sim.stats()["requests"] == 0

    sim.configure(ttft_ms=0, tokens_per_s=0, length=3)
    assert ask_chat(openai_client, chat_image(DATA)).choices[0].message.content
    assert ask_responses(openai_client, input_image(DATA)).status == "completed"
    # Plain base64 in a file part is data, not a URL.
    assert ask_chat(openai_client, chat_file("JVBERi0xLjQK")).choices[0].message.content
    assert sim.stats()["requests"] == 3


def test_a_tool_output_image_is_checked_too(vision_slot, sim, openai_client) -> None:
    """``function_call_output.output`` may be a list of input parts (OpenAPI
    ``FunctionCallOutputItemParam``): an image there is fetched like any other."""
    import openai

    call = {"type": "function_call", "call_id": "c1", "name": "snap", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": [input_image(REFUSED[0])]}
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.responses.create(model="primary", input=[call, output])
    assert refused.value.param == "input[1].output[0].image_url"
    assert sim.stats()["requests"] == 0
