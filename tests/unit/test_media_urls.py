"""``chat.media_urls.refusal``: which URLs a slot's policy lets go upstream. Names resolve with
the machine's own resolver; those used here need no DNS (``localhost``, numeric forms, a
reserved ``.invalid`` name). The end-to-end checks, through the openai SDK, are in
``tests/integration/test_media_urls.py``."""

from __future__ import annotations

import pytest

from chat.media_urls import NONE, PUBLIC, is_url, refusal

ALLOW = ["images.internal", "*.cdn.internal"]


async def judged(url: str, policy: str = PUBLIC) -> str | None:
    return await refusal(url, policy=policy, allow_hosts=ALLOW)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "(link-local)"),
        ("http://[::ffff:127.0.0.1]:8310/", "(loopback)"),
        ("http://[::ffff:10.1.2.3]/", "(private)"),
        ("http://2130706433/", "resolves to 127.0.0.1"),
        ("http://0177.0.0.1/", "resolves to 127.0.0.1"),
        ("http://017700000001/", "resolves to 127.0.0.1"),
        ("http://0x7f.1/", "resolves to 127.0.0.1"),
        ("http://127.1/", "resolves to 127.0.0.1"),
        ("http://0/", "(unspecified)"),
        ("http://localhost./", "(loopback)"),
        ("http://LOCALHOST:8310/", "(loopback)"),
        ("http://10.0.0.5/", "(private)"),
        ("http://192.168.1.1/", "(private)"),
        ("http://100.64.0.1/", "(not global)"),
        ("http://224.0.0.1/", "(multicast)"),
        ("http://[::1]/", "(loopback)"),
        ("http://[::]/", "(unspecified)"),
        ("http://[fe80::1]/", "(link-local)"),
        ("http://[fe80::1%25eth0]/", "(link-local)"),
        ("http://[fd00::1]/", "(private)"),
        ("http://[2002:7f00:1::]/", "(loopback)"),  # 6to4 of 127.0.0.1
        ("http://[64:ff9b::a9fe:a9fe]/", "(link-local)"),  # NAT64 of 169.254.169.254
        ("http://[::7f00:1]/", "(loopback)"),  # IPv4-compatible 127.0.0.1
        ("file:///etc/passwd", "'file' URLs are not allowed"),
        ("gopher://127.0.0.1:6379/_INFO", "'gopher' URLs are not allowed"),
        ("ftp://93.184.215.14/", "'ftp' URLs are not allowed"),
        ("//93.184.215.14/cat.png", "URLs without a scheme"),
        ("http://images.internal@127.0.0.1/", "user name or password"),
        ("http://127.0.0.1\\@93.184.215.14/", "backslashes"),
        ("http://93.184.215.14/ cat.png", "spaces"),
        ("http://93.184.215.14\t/", "control characters"),
        ("http://bücher.example/", "non-ASCII"),
        ("http://%31%32%37.0.0.1/", "not a valid host name"),
        ("http://[127.0.0.1]/", "cannot be read"),
        ("http://93.184.215.14:99999/", "cannot be read"),
        ("http:///cat.png", "no host"),
        ("http://no-such-host.invalid/", "could not be resolved"),
        ("http://evil.images.internal/", "could not be resolved"),  # not a wildcard entry
    ],
)
async def test_urls_to_this_network_are_refused(url: str, why: str) -> None:
    reason = await judged(url)
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.215.14/cat.png",
        "HTTP://93.184.215.14:8080/cat.png?size=2#top",
        "https://[2606:4700::1111]/cat.png",
        "https://[::ffff:93.184.215.14]/cat.png",
        "http://images.internal/cat.png",
        "http://IMAGES.internal./cat.png",
        "http://a.cdn.internal/cat.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "DATA:image/png;base64,iVBORw0KGgo=",
    ],
)
async def test_public_allowed_and_data_urls_pass(url: str) -> None:
    assert await judged(url) is None


@pytest.mark.parametrize(
    "url", ["https://93.184.215.14/cat.png", "http://images.internal/cat.png", "file:///etc/passwd"]
)
async def test_no_remote_urls_passes_only_data(url: str) -> None:
    reason = await judged(url, NONE)
    assert reason is not None
    assert "takes no remote URLs" in reason
    assert await judged("data:image/png;base64,AA", NONE) is None


async def test_a_name_that_does_not_resolve_in_time_is_refused() -> None:
    # No answer in 0 s: the lookup is cancelled, and the URL refused rather than let through
    # (with time, localhost resolves, and the refusal names its address instead).
    reason = await refusal("http://localhost/", policy=PUBLIC, allow_hosts=[], timeout_s=0)
    assert reason == "the host localhost could not be resolved"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("JVBERi0xLjQK", False),
        ("/9j/4AAQSkZJRg==", False),
        ("data:application/pdf;base64,JVBERi0xLjQK", True),
        ("http://127.0.0.1/a.pdf", True),
        ("//127.0.0.1/a.pdf", True),
    ],
)
def test_inline_base64_is_not_a_url(value: str, url: bool) -> None:
    assert is_url(value) is url
