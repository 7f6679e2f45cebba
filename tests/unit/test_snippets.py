"""The admin's embed snippets (issue 16, finding 5): a widget's title goes into an HTML
attribute of the snippet a site owner pastes into their page; no title may add markup."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from chat.models import Widget

XSS = [
    'Help" onload="alert(77)',
    "Help' onmouseover='alert(1)",
    '"><script>alert(1)</script>',
    "</iframe><img src=x onerror=alert(1)>",
    "Ask us &amp; more",
]


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.mark.parametrize("title", XSS)
def test_a_title_stays_inside_its_attribute(title: str) -> None:
    widget = Widget(public_key="wk_test", title=title)
    snippet = widget.embed_snippets(base_url="https://chat.example.com")["iframe"]
    parser = Tags()
    parser.feed(snippet)
    assert len(parser.tags) == 1
    tag, attrs = parser.tags[0]
    assert tag == "iframe"
    assert set(attrs) == {"src", "title", "style"}
    assert attrs["title"] == title
