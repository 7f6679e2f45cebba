"""How answers look, in a real browser: markdown, code, reasoning, tool calls, and what a
model (or a user) cannot do with HTML.

Answers come from the simulator replaying streams: the recorded ones in tests/fixtures/sse, and
a few written here (the exact text a test needs, as OpenAI-style chunks cut at odd places).
States in the middle of a stream are checked on an ``AnswerView`` fed from page JavaScript,
one animation frame at a time, so no check depends on timing.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect

from chat.relay.accumulate import MessageAccumulator
from chat.relay.sse import SSEDecoder
from chat.simulator import SimulatorThread
from tests.conftest import FIXTURES, make_slot
from tests.e2e.test_accessibility import violations

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RECORDED = FIXTURES / "sse"
RENDERED = re.compile(r"\brendered\b")  # render.js has drawn the answer for good
HIGHLIGHTED = re.compile(r"\bhljs\b")

CODE = 'def greet(name: str) -> str:\n    return f"Hello, {name}!"'
MARKDOWN = f"""# Release notes

Here is **what changed** in this release:

- faster *streaming*
- safer rendering
- a [changelog](https://example.com/changes)

```python
{CODE}
```

That is all.
"""

# Each would set window.__xss if it ran. Model output is markdown; user input is plain text.
XSS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=2</script>",
    "[click](javascript:window.__xss=3)",
    '<iframe src="javascript:parent.__xss=4"></iframe>',
    "![pic](javascript:window.__xss=5)",
    '<a href="javascript:window.__xss=6">link</a>',
    '<details open ontoggle="window.__xss=7">x</details>',
    '<svg onload="window.__xss=8"></svg>',
    "[data](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX194c3M9OTwvc2NyaXB0Pg==)",
    "![data](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9InBhcmVudC5fX3hzcz0xMCIvPg==)",
    "<style>#messages { display: none }</style>",
    "Inline <img src=x onerror=window.__xss=11> and <b onmouseover=window.__xss=12>bold</b>",
]
XSS_ANSWER = "\n\n".join(XSS) + "\n\n- item <img src=x onerror=window.__xss=13>\n"
XSS_TOOL_NAME = "<img src=x onerror=window.__xss=14>"
XSS_TOOL_ARGS = '{"q": "</script><script>window.__xss=15</script>"}'

THINK = "Let me weigh **both** options.\nThe second is faster."
THINK_ANSWER = "The *second* option."
THINK_CONTENT = f"<think>\n{THINK}</think>\n\n{THINK_ANSWER}"


def pieces(text: str, size: int = 5) -> list[str]:
    """Cut ``text`` every ``size`` characters: markup and tags end up split across deltas."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def chat_stream(deltas: list[dict[str, Any]], finish_reason: str = "stop") -> bytes:
    """An OpenAI-style ``chat.completion.chunk`` stream carrying ``deltas``, then ``[DONE]``."""
    head = {"id": "chatcmpl-render", "object": "chat.completion.chunk", "created": 0}
    deltas = [{"role": "assistant", "content": ""}, *deltas, {}]
    events = [
        {
            **head,
            "model": "sim",
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": finish_reason if i == len(deltas) - 1 else None,
                }
            ],
        }
        for i, delta in enumerate(deltas)
    ]
    data = b"".join(
        b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events
    )
    return data + b"data: [DONE]\n\n"


WRITTEN = {
    "render-markdown.sse": chat_stream([{"content": p} for p in pieces(MARKDOWN)]),
    "render-xss.sse": chat_stream(
        [{"reasoning_content": XSS[0]}]
        + [{"content": p} for p in pieces(XSS_ANSWER, 9)]
        + [
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_x",
                        "type": "function",
                        "function": {"name": XSS_TOOL_NAME, "arguments": ""},
                    }
                ]
            },
            *(
                {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
                for p in pieces(XSS_TOOL_ARGS, 4)
            ),
        ],
        "tool_calls",
    ),
    "render-think-tags.sse": chat_stream([{"content": p} for p in pieces(THINK_CONTENT, 3)]),
}


@pytest.fixture(scope="module")
def replay_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorThread]:
    """A simulator whose replay dir holds the recorded streams and the ones written above."""
    directory: Path = tmp_path_factory.mktemp("replay")
    for path in RECORDED.glob("*.sse"):
        shutil.copy(path, directory)
    for name, body in WRITTEN.items():
        (directory / name).write_bytes(body)
    with SimulatorThread(replay_dir=directory) as simulator:
        yield simulator


@pytest.fixture
def replay(transactional_db: None, replay_simulator: SimulatorThread) -> SimulatorThread:
    """The default slot on the replaying simulator; ``replay.configure(replay=name)``."""
    replay_simulator.reset()
    replay_simulator.configure(ttft_ms=0, tokens_per_s=200)
    make_slot(replay_simulator.base_url)
    return replay_simulator


def recorded_answer(name: str) -> MessageAccumulator:
    """What the server's accumulator makes of a recorded stream (choice 0)."""
    decoder = SSEDecoder()
    accumulator = MessageAccumulator()
    raw = (RECORDED / name).read_bytes()
    for event in decoder.feed(raw) + decoder.flush():
        if event.event == "message" and event.data.startswith("{"):
            accumulator.add(json.loads(event.data))
    return accumulator


def sign_in(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    page.get_by_label("Username").fill("ada")
    page.get_by_label("Password").fill("correct horse 42")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Conversations")).to_be_visible()
    # Module scripts have run by "load": before that, Send would submit the bare form.
    page.wait_for_load_state()


def ask(page: Page, text: str) -> Locator:
    """Send ``text``; return the answer once it has ended (whatever its status)."""
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer).to_have_class(RENDERED)
    expect(answer).not_to_have_attribute("data-status", "streaming")
    return answer


def reload(page: Page) -> Locator:
    page.reload()
    answer = page.locator("article.message.assistant").last
    expect(answer).to_have_class(RENDERED)
    return answer


def check_markdown(page: Page, answer: Locator) -> None:
    expect(answer.locator("h1")).to_have_text("Release notes")
    expect(answer.locator("strong")).to_have_text("what changed")
    expect(answer.locator("ul > li")).to_have_count(3)
    expect(answer.locator("li em")).to_have_text("streaming")
    link = answer.get_by_role("link", name="changelog")
    expect(link).to_have_attribute("href", "https://example.com/changes")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    code = answer.locator("pre code")
    expect(code).to_have_count(1)
    expect(code).to_have_class(re.compile(r"^language-python hljs$"))
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(code.locator(".hljs-string").first).to_contain_text("Hello")
    expect(answer.locator(".md-block").last).to_have_text("That is all.")
    expect(answer.locator("script, style, iframe")).to_have_count(0)

    button = answer.locator("button.copy-code")
    expect(button).to_have_accessible_name("Copy code")
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    # Wrap: long lines fold inside the block instead of scrolling it sideways, and back.
    wrap = answer.get_by_role("button", name="Wrap long lines")
    pre = answer.locator("pre")
    expect(pre).to_have_css("white-space", "pre")
    wrap.click()
    expect(wrap).to_have_attribute("aria-pressed", "true")
    expect(pre).to_have_css("white-space", "pre-wrap")
    wrap.click()
    expect(pre).to_have_css("white-space", "pre")
    expect(pre).to_have_attribute("tabindex", "0")  # a block that scrolls is reachable by Tab


def test_markdown_answer_renders_highlights_and_copies(
    browser_context: BrowserContext, server, replay, user
) -> None:
    browser_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    replay.configure(replay="render-markdown.sse")
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    check_markdown(page, ask(page, "What changed?"))
    check_markdown(page, reload(page))


def xss_findings(page: Page) -> dict[str, Any]:
    """window.__xss, and every element in #messages that could run script or load a page."""
    page.wait_for_function("[...document.images].every((image) => image.complete)")
    findings: dict[str, Any] = page.evaluate(
        """() => {
          const root = document.getElementById("messages");
          const bad = [...root.querySelectorAll(
            "script, iframe, frame, object, embed, style, svg, math, form, base, meta, link"
          )].map((el) => el.outerHTML);
          for (const el of root.querySelectorAll("*")) {
            for (const attr of el.attributes) {
              const url = /^(href|src|srcset|action|formaction|xlink:href|poster)$/i;
              if (/^on/i.test(attr.name)) bad.push(el.outerHTML);
              if (url.test(attr.name) && /^\\s*(javascript|data|vbscript):/i.test(attr.value)) {
                bad.push(el.outerHTML);
              }
            }
          }
          return { xss: window.__xss ?? null, bad };
        }"""
    )
    return findings


def test_html_from_the_model_and_the_user_stays_inert(
    browser_context: BrowserContext, server, replay, user
) -> None:
    replay.configure(replay="render-xss.sse")
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    question = "\n".join(XSS)
    answer = ask(page, question)
    user_message = page.locator("article.message.user .content").last
    expect(answer.locator(".tool-call-name")).to_have_text(XSS_TOOL_NAME)
    expect(answer.locator(".tool-call-arguments")).to_contain_text("window.__xss=15")
    expect(answer.locator(".reasoning-text")).to_have_text(XSS[0])
    # Raw HTML shows as the text the model wrote.
    expect(answer.locator(".content")).to_contain_text("<script>window.__xss=2</script>")
    assert user_message.text_content() == question
    assert xss_findings(page) == {"xss": None, "bad": []}
    # Markdown images are links, never loaded (no request can carry data out).
    expect(answer.locator(".content img")).to_have_count(0)
    expect(answer.locator(".content a", has_text="Image: pic")).to_have_count(1)

    answer = reload(page)
    expect(answer.locator(".tool-call-name")).to_have_text(XSS_TOOL_NAME)
    expect(answer.locator(".content")).to_contain_text("<script>window.__xss=2</script>")
    assert page.locator("article.message.user .content").last.text_content() == question
    assert xss_findings(page) == {"xss": None, "bad": []}


REASONING_STREAMS = [
    "deepseek-reasoning-content.sse",  # reasoning_content, then content
    "vllm-reasoning-and-reasoning_content-partial.sse",  # both fields in one delta: once
    "vllm-reasoning-field-partial.sse",  # reasoning only, stream cut short
    "llamacpp-chat-reasoning-content.sse",
    "openrouter-reasoning-comments.sse",  # reasoning, with comment lines between events
    "ollama-chat-reasoning-field.sse",
]


def check_reasoning(answer: Locator, expected: MessageAccumulator) -> None:
    thinking = answer.locator("details.reasoning")
    expect(thinking.locator("summary")).to_have_text("Thinking")
    expect(thinking.locator(".reasoning-text")).to_have_text(expected.reasoning().strip())
    if expected.content():
        expect(answer.locator(".content")).to_have_text(expected.content().strip())
        expect(thinking).not_to_have_attribute("open", "")
    else:
        expect(thinking).to_have_attribute("open", "")


@pytest.mark.parametrize("name", REASONING_STREAMS)
def test_recorded_reasoning_shows_in_the_thinking_block(
    browser_context: BrowserContext, server, replay, user, name: str
) -> None:
    replay.configure(replay=name)
    expected = recorded_answer(name)
    assert expected.reasoning()
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    check_reasoning(ask(page, "Think first"), expected)
    check_reasoning(reload(page), expected)


def test_think_tags_in_the_content_are_reasoning(
    browser_context: BrowserContext, server, replay, user
) -> None:
    replay.configure(replay="render-think-tags.sse")
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    for answer in (ask(page, "Which one?"), reload(page)):
        thinking = answer.locator("details.reasoning")
        expect(thinking.locator(".reasoning-text")).to_have_text(THINK)
        expect(thinking).not_to_have_attribute("open", "")
        expect(answer.locator(".content")).to_have_text("The second option.")
        expect(answer.locator(".content em")).to_have_text("second")
        expect(answer.locator(".content")).not_to_contain_text("think>")


@pytest.mark.parametrize(
    "name", ["openai-chat-tool-calls.sse", "openai-chat-parallel-tool-calls.sse"]
)
def test_tool_calls_show_name_and_pretty_arguments(
    browser_context: BrowserContext, server, replay, user, name: str
) -> None:
    replay.configure(replay=name)
    calls = recorded_answer(name).tool_calls()
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    for answer in (ask(page, "Use a tool"), reload(page)):
        blocks = answer.locator(".tool-call")
        expect(blocks).to_have_count(len(calls))
        for block, call in zip(blocks.all(), calls, strict=True):
            arguments = json.loads(call["function"]["arguments"])
            pretty = json.dumps(arguments, indent=2, ensure_ascii=False)
            expect(block.locator(".tool-call-name")).to_have_text(call["function"]["name"])
            assert block.locator(".tool-call-arguments").text_content() == pretty


# --- One AnswerView fed from page JavaScript, frame by frame --------------------------------

FEED = """async ([deltas, finish]) => {
  const { AnswerView } = await import("/static/chat/render.js");
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const view = window.view ?? (window.view = new AnswerView("test"));
  document.body.append(view.article);
  for (const delta of deltas) view.applyDelta(delta);
  await frame();
  if (finish) view.finish({ status: "complete" });
}"""


@pytest.fixture
def view_page(browser_context: BrowserContext, server) -> Page:
    """A page of the site (its static files) to run render.js in; nothing signed in."""
    page = browser_context.new_page()
    page.goto(server.base_url + "/login/")
    return page


def feed(page: Page, *deltas: dict[str, Any], finish: bool = False) -> Locator:
    page.evaluate(FEED, [list(deltas), finish])
    return page.locator("article.message.assistant")


def test_finished_blocks_are_left_alone_while_the_tail_streams(view_page: Page) -> None:
    answer = feed(view_page, {"content": "# Title\n\nFirst paragraph.\n\n"})
    view_page.evaluate(
        """() => {
          window.first = document.querySelector(".md-block");
          window.changes = 0;
          new MutationObserver((records) => { window.changes += records.length; })
            .observe(window.first, { subtree: true, childList: true, characterData: true,
                                     attributes: true });
        }"""
    )
    for text in ["Second ", "paragraph.\n\n- a", "\n- b\n\n", "```js\nlet x = 1;\n```\n\n", "End."]:
        feed(view_page, {"content": text})
    feed(view_page, finish=True)
    expect(answer.locator(".md-block")).to_have_count(6)
    assert view_page.evaluate("window.first.isConnected && window.changes") == 0
    expect(answer.locator("h1")).to_have_text("Title")


def test_code_is_highlighted_once_its_fence_closes(view_page: Page) -> None:
    answer = feed(view_page, {"content": "Code:\n\n``"}, {"content": "`python\ndef f():\n"})
    code = answer.locator("pre code")
    expect(code).to_have_class("language-python")
    expect(code.locator(".typing-cursor")).to_have_count(1)  # the cursor follows the code
    expect(answer.get_by_role("button", name="Copy code")).to_be_visible()
    feed(view_page, {"content": "    return 1\n``"})
    expect(code).not_to_have_class(HIGHLIGHTED)
    feed(view_page, {"content": "`\nAfter"})
    expect(code).to_have_class(HIGHLIGHTED)
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(answer.locator("p .typing-cursor")).to_have_count(1)
    feed(view_page, finish=True)
    expect(answer.locator(".typing-cursor")).to_have_count(0)
    expect(answer.locator("p").last).to_have_text("After")


def test_an_unfinished_fence_is_highlighted_when_the_answer_ends(view_page: Page) -> None:
    answer = feed(view_page, {"content": "```python\nimport os\n"})
    expect(answer.locator("pre code")).not_to_have_class(HIGHLIGHTED)
    feed(view_page, finish=True)
    expect(answer.locator("pre code")).to_have_class(HIGHLIGHTED)


def test_thinking_is_open_while_thinking_and_folds_when_the_answer_begins(
    view_page: Page,
) -> None:
    answer = feed(view_page, {"content": "<thi"}, {"content": "nk>\nHmm, "})
    thinking = answer.locator("details.reasoning")
    expect(thinking).to_have_attribute("open", "")
    expect(thinking.locator(".reasoning-text")).to_have_text("Hmm,")
    expect(answer.locator(".content")).to_have_text("")
    feed(view_page, {"content": "let me see.</thi"}, {"reasoning_content": ""})
    expect(thinking).to_have_attribute("open", "")
    expect(thinking.locator(".reasoning-text")).to_have_text("Hmm, let me see.")
    feed(view_page, {"content": "nk>\n\n"})
    expect(thinking).to_have_attribute("open", "")  # blank lines are not an answer yet
    feed(view_page, {"content": "**Yes**."})
    expect(thinking).not_to_have_attribute("open", "")
    expect(answer.locator(".content strong")).to_have_text("Yes")
    expect(answer.locator(".content .typing-cursor")).to_have_count(1)


def test_reasoning_fields_stream_into_the_thinking_block(view_page: Page) -> None:
    answer = feed(
        view_page,
        {"reasoning_content": "One"},
        {"reasoning": " two", "reasoning_content": " two"},
        {"reasoning": " three"},
    )
    thinking = answer.locator("details.reasoning")
    expect(thinking.locator(".reasoning-text")).to_have_text("One two three")
    expect(thinking).to_have_attribute("open", "")
    feed(
        view_page,
        {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a'}}]},
    )
    expect(thinking).not_to_have_attribute("open", "")  # a tool call is an answer too
    expect(answer.locator(".tool-call-arguments")).to_have_text('{"a')
    feed(view_page, {"tool_calls": [{"index": 0, "function": {"arguments": '": [1]}'}}]})
    assert answer.locator(".tool-call-arguments").text_content() == '{\n  "a": [\n    1\n  ]\n}'


def test_rendering_the_history_again_leaves_a_streaming_answer_alone(view_page: Page) -> None:
    # history.js renders the history again after htmx swaps (e.g. the sidebar's refresh).
    answer = feed(view_page, {"content": "Streaming **now**"})
    view_page.evaluate(
        """async () => {
          const { hydrateAnswers } = await import("/static/chat/render.js");
          hydrateAnswers(document);
        }"""
    )
    expect(answer.locator("strong")).to_have_text("now")
    expect(answer.locator(".typing-cursor")).to_have_count(1)
    feed(view_page, {"content": " and after."}, finish=True)
    expect(answer.locator(".content")).to_have_text("Streaming now and after.")


def test_an_answer_with_code_passes_axe(
    browser_context: BrowserContext, server, replay, user
) -> None:
    """axe-core (tests/e2e/test_accessibility.py) on a rendered answer: code, lists, links."""
    replay.configure(replay="render-markdown.sse")  # headings, a list, a link, a code block
    page = browser_context.new_page()
    sign_in(page, server.base_url)
    page.get_by_role("textbox", name="Message").fill("What changed?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".code-block")).to_have_count(1)
    assert violations(page) == []
