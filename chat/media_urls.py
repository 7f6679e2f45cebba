"""Which remote URLs in ``/v1`` content parts may go upstream (issue 33, finding 3).

Slipstream never fetches a part's URL, but a model server may (vLLM fetches ``image_url``
itself): without a check, anyone with an API key has it fetch the cloud's metadata service,
loopback or the private network. A slot's policy (``Slot.media_urls``) is one of ``POLICIES``:
``"public"``, http(s) URLs whose host resolves only to global addresses (IANA's special-purpose
registries, as ``ipaddress.is_global`` reads them, also for IPv4 addresses carried in IPv6 ones);
``"none"``, only ``data:`` URLs. Hosts the operator lists skip the address check.

Pure: no Django. Names are resolved with the event loop's ``getaddrinfo`` (a worker thread, so
the loop does not wait), which reads the numeric forms (``2130706433``, ``0177.0.0.1``,
``0x7f.1``, ``127.1``) as the C library does, and as the model server will. What stays open: a
name whose DNS answer changes between this check and the model server's own lookup (DNS
rebinding); only fetching here and sending the bytes inline would close it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

PUBLIC = "public"
NONE = "none"
POLICIES = (PUBLIC, NONE)

# Resolving is fast or hopeless: a name that has no answer within this many seconds is refused.
RESOLVE_TIMEOUT_S = 3.0

_SCHEMES = ("http", "https")
# A scheme per RFC 3986; base64 (inline data without a ``data:`` header) never has a colon.
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A host name of letters, digits, hyphens, underscores and dots (IDNs in their ``xn--`` form):
# anything else (``%``-escapes, unicode) is read differently by different URL parsers.
_HOST_NAME = re.compile(r"^[a-z0-9._-]+$")
# RFC 6052's well-known NAT64 prefix: the gateway connects to the IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_url(value: str) -> bool:
    """Whether ``value`` is a URL rather than bare base64: it has a scheme, or starts ``//``."""
    return bool(_HAS_SCHEME.match(value)) or value.startswith("//")


async def refusal(
    url: str, *, policy: str, allow_hosts: Iterable[str], timeout_s: float = RESOLVE_TIMEOUT_S
) -> str | None:
    """Why ``url`` may not go upstream under ``policy`` (one of ``POLICIES``), as the end of a
    sentence ("the host … is not a public address (loopback)"), or None when it may.
    ``allow_hosts``: lower-case host names that skip the address check, exactly or, written
    ``*.example.org``, with their subdomains. ``data:`` URLs always pass."""
    if url[:5].lower() == "data:":
        return None
    if policy == NONE:
        return "this model takes no remote URLs; send the content inline as a data: URL"
    try:
        host, port = _host_and_port(url)
    except _Malformed as exc:
        return str(exc)
    if _allowed(host, allow_hosts):
        return None
    return await _address_refusal(host, port, timeout_s)


class _Malformed(Exception):
    """A URL refused before its host is looked at; the message says why."""


def _host_and_port(url: str) -> tuple[str, int]:
    """The lower-case host (no brackets, no final dot) and port of an http(s) URL. Raises
    ``_Malformed`` for another scheme and for what URL parsers read in different ways."""
    if any(not 0x21 <= ord(c) <= 0x7E for c in url) or "\\" in url:
        raise _Malformed(
            "the URL has spaces, control characters, backslashes or non-ASCII characters"
        )
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise _Malformed("the URL's host or port cannot be read") from None
    if scheme not in _SCHEMES:
        shown = f"'{scheme}' URLs are" if scheme else "URLs without a scheme are"
        raise _Malformed(f"{shown} not allowed; send an http(s) URL or a data: URL")
    if "@" in parts.netloc:
        raise _Malformed("URLs with a user name or password are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _Malformed("the URL has no host")
    return host, port


def _allowed(host: str, allow_hosts: Iterable[str]) -> bool:
    return any(
        host == entry or (entry.startswith("*.") and host.endswith(entry[1:]))
        for entry in allow_hosts
    )


async def _address_refusal(host: str, port: int, timeout_s: float) -> str | None:
    """Why ``host`` (a literal address, or a name and every address it resolves to) is not
    public, or None."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        kind = _not_public(literal)
        return f"the host {host} is not a public address ({kind})" if kind else None
    if not _HOST_NAME.match(host):
        return f"the host {host!r} is not a valid host name"
    addresses = await _resolve(host, port, timeout_s)
    if not addresses:
        return f"the host {host} could not be resolved"
    for address in addresses:
        kind = _not_public(address)
        if kind:
            return f"the host {host} resolves to {address}, which is not a public address ({kind})"
    return None


async def _resolve(host: str, port: int, timeout_s: float) -> list[Address]:
    """The addresses ``host`` resolves to, none when it does not within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
    except (OSError, TimeoutError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found]


def _not_public(address: Address) -> str:
    """What ``address`` is when it is not a global one ("loopback", "private", …), or ""."""
    for inner in _embedded_ipv4(address):
        kind = _not_public(inner)
        if kind:
            return kind
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return ""  # judged by the IPv4 address it carries (ipaddress calls all of them private)
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "" if address.is_global else "not global"


def _embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one reaches: IPv4-mapped and -compatible, 6to4, Teredo's
    server and client, the NAT64 well-known prefix."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    inner = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [a for a in inner if a is not None]
