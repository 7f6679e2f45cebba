"""Which MCP server URLs Slipstream may connect to (issue 31, item 5).

The address policy is ``chat.media_urls``' (issue 33): the host must resolve only to global
addresses (no loopback, private, link-local or cloud-metadata ranges; IPv4 carried in IPv6 and
the C library's numeric forms such as ``2130706433`` read as the connection would read them),
unless the operator lists it in ``SLIPSTREAM_MCP_ALLOW_HOSTS``. Checked when staff save a server
and again before every connection and every request (a redirect included), since DNS answers
change. No Django.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from chat import media_urls

SCHEMES = ("http", "https")


async def refusal(url: str, *, allow_hosts: Iterable[str]) -> str | None:
    """Why Slipstream may not connect to ``url`` (the end of a sentence: "the host … is not a
    public address (loopback)"), or None when it may. ``allow_hosts``: lower-case names, exact
    or ``*.example.org``, that skip the address check (not the scheme check)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return "the URL cannot be read"
    if scheme not in SCHEMES:
        shown = f"'{scheme}' URLs are" if scheme else "URLs without a scheme are"
        return f"{shown} not allowed; an MCP server's URL is http:// or https://"
    return await media_urls.refusal(url, policy=media_urls.PUBLIC, allow_hosts=allow_hosts)
