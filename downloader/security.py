"""Which URLs and addresses the downloader may connect to.

A web dataset is a list of URLs written by strangers. Without a guard, a row like
`http://169.254.169.254/latest/meta-data/` (cloud credentials), `http://127.1:6379/` (our own
Redis) or a public page that redirects to either would make the downloader attack its own
network. The guard runs at three points, so no path around it exists:

1. `check_url` before every request and on every redirect hop: the scheme must be http(s), and a
   host given as a raw IP address in ANY notation (`2130706433`, `0x7f.1`, `0177.0.0.1`,
   `127.1`, `[::ffff:127.0.0.2]`) is judged directly, without a lookup.
2. `GuardedResolver` wraps aiohttp's resolver: names that resolve only to refused addresses fail
   as `blocked_address`, refused addresses are dropped from mixed answers.
3. `guarded_socket_factory()` makes the connector's socket factory: it sees the exact address of every
   connection attempt (also for raw-IP hosts, which aiohttp never passes to the resolver) and
   refuses before `connect()`. A DNS answer that changes between lookups (rebinding) cannot
   get past it, because it checks what is actually dialled.

    allowed, why = address_allowed(ipaddress.ip_address("10.0.0.1"))   # (False, 'private address 10.0.0.1')

`--allow-private` (tests, the local demo) turns the address checks off; the scheme check stays,
and so does the refusal of addresses no server has (`never_a_server`: multicast, unspecified,
broadcast and IPv4's reserved 240/4), so those are `blocked_address` either way: a permanent
outcome, never a `connect_error` that `parts retry` would fetch again. Port 0 is `invalid_url`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from aiohttp.abc import AbstractResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (allowed, why not): address_allowed below. Tests that need one loopback address to play a
# public host pass their own policy to Fetcher; no setting or variable can change it.
AddressPolicy = Callable[[IPAddress], "tuple[bool, str]"]
ALLOWED_SCHEMES = ("http", "https")
# 100.64.0.0/10 (carrier-grade NAT) is not "private" to Python but is not the public internet.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddressError(OSError):
    """A connection to a refused address was attempted (see `blocked_reason`)."""

    MARKER = "streamcap: blocked address"

    def __init__(self, why: str) -> None:
        super().__init__(f"{self.MARKER}: {why}")
        self.why = why


def blocked_reason(exc: BaseException | None) -> str | None:
    """Why the guard refused, when `exc` (or what it wraps) comes from it; else None.

    aiohttp wraps the guard's error (ClientConnectorError.os_error) and happy eyeballs may merge
    several attempts' errors into one OSError message, so both the chain and the text are read.
    """
    marker = BlockedAddressError.MARKER + ": "
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, BlockedAddressError):
            return exc.why
        text = str(exc)
        if marker in text:
            return text[text.index(marker) + len(marker) :].split(", " + marker)[0][:200]
        exc = getattr(exc, "os_error", None) or exc.__cause__
    return None


class InvalidURLError(ValueError):
    """Not a URL the downloader fetches (empty, malformed, not http/https, no host)."""


def address_allowed(ip: IPAddress) -> tuple[bool, str]:
    """(True, '') for a public unicast address, else (False, why)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = (
            ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        )
        if embedded is not None:  # ::ffff:127.0.0.1 reaches 127.0.0.1
            ok, why = address_allowed(embedded)
            return (ok, why) if not ok else (True, "")
    kinds = (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("reserved", ip.is_reserved),
        ("unique-local" if isinstance(ip, ipaddress.IPv6Address) else "private", ip.is_private),
        ("shared (CGNAT)", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("non-global", not ip.is_global),
    )
    for kind, hit in kinds:
        if hit:
            return False, f"{kind} address {ip}"
    return True, ""


def never_a_server(ip: IPAddress) -> str | None:
    """Why no HTTP server can have address `ip` (whatever --allow-private says), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast:
        return f"multicast address {ip}"
    if ip.is_unspecified:
        return f"unspecified address {ip}"
    if isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved:  # 240/4 and the broadcast address
        return f"reserved address {ip}"
    return None


def parse_ip_host(host: str) -> IPAddress | None:
    """The address a host string denotes when it is a raw IP in any notation, else None.

    IPv4 follows the inet_aton/WHATWG rules browsers and libc use: 1 to 4 dot-separated parts,
    each decimal, 0x-hex or 0-octal, the last part filling the remaining bytes — so
    `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` and `0x7f.0.0.1` are all 127.0.0.1.
    """
    text = host.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        value = _parse_ipv4_number(part)
        if value is None:
            return None
        numbers.append(value)
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(leading):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(part: str) -> int | None:
    if not part:
        return None
    try:
        if part.startswith("0x"):
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isascii() and part.isdigit() else None
    except ValueError:
        return None


def check_url(url: str | URL, *, allow_private: bool, policy: AddressPolicy | None = None) -> URL:
    """The parsed URL if it may be fetched; InvalidURLError or BlockedAddressError otherwise."""
    if isinstance(url, URL):
        parsed = url
    else:
        text = (url or "").strip()
        if not text:
            raise InvalidURLError("empty URL")
        try:
            parsed = URL(text)
        except (ValueError, TypeError) as e:
            raise InvalidURLError(f"malformed URL: {e}") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise InvalidURLError(f"scheme {parsed.scheme or '(none)'!r} is not http or https")
    try:
        host = parsed.raw_host
    except (ValueError, UnicodeError) as e:
        raise InvalidURLError(f"malformed host: {e}") from None
    if not host:
        raise InvalidURLError("URL has no host")
    if parsed.port == 0:
        raise InvalidURLError("port 0: no server listens there")
    ip = parse_ip_host(host)
    if ip is not None and (never := never_a_server(ip)):
        raise BlockedAddressError(never)
    if not allow_private and ip is not None:
        ok, why = (policy or address_allowed)(ip)
        if not ok:
            raise BlockedAddressError(why)
    return parsed


def sockaddr_allowed(sockaddr: tuple[Any, ...], policy: AddressPolicy | None = None) -> tuple[bool, str]:
    try:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
    except ValueError:
        return False, f"unparseable address {sockaddr[0]!r}"
    return (policy or address_allowed)(ip)


def guarded_socket_factory(policy: AddressPolicy | None = None) -> Callable[[tuple[Any, ...]], socket.socket]:
    """A socket factory for aiohttp's connector that refuses before connecting to a refused address.

    aiohttp calls it with (family, type, proto, canonname, sockaddr) of each attempt it makes.
    """

    def guarded_socket(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        ok, why = sockaddr_allowed(sockaddr, policy)
        if not ok:
            raise BlockedAddressError(why)
        return socket.socket(family=family, type=type_, proto=proto)

    return guarded_socket


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that drops refused addresses from another resolver's answers.

    When nothing allowed is left the lookup fails with BlockedAddressError (reported as
    `blocked_address`, not as a DNS error). The connector's socket factory checks again at
    connect time; this early filter only keeps aiohttp from trying refused addresses at all.
    """

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy | None = None) -> None:
        self._inner, self._policy = inner, policy

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        answers = await self._inner.resolve(host, port, family)
        allowed, reasons = [], []
        for answer in answers:
            ok, why = sockaddr_allowed((answer["host"],), self._policy)
            (allowed.append(answer) if ok else reasons.append(why))
        if not allowed:
            raise BlockedAddressError(f"{host} resolves to " + ", ".join(reasons or ["nothing"]))
        return allowed

    async def close(self) -> None:
        await self._inner.close()
