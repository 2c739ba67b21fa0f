"""Where a callback may go: public addresses only, unless CALLBACK_ALLOW_PRIVATE=true.

A `callback_url` is chosen by whoever submits a job, and the worker POSTs to it from
inside the deployment: without a guard it could reach the cloud metadata service
(169.254.169.254), Redis, MongoDB or any internal admin page (server-side request
forgery). So the host is resolved and refused when ANY of its addresses is loopback,
private, link-local, multicast, reserved, unspecified, shared (100.64.0.0/10) or
otherwise not global; IPv4 inside IPv6 (`::ffff:a.b.c.d`, 6to4 `2002::/16`, NAT64
`64:ff9b::/96`) is judged by the IPv4 address it carries.

The check runs at submission (a 422) and again at delivery, where the worker connects
only to the addresses it has just vetted (`src.jobs.callbacks`), so a name that
resolves elsewhere by then (DNS rebinding) cannot slip through.
Standard library only: the API imports it, and it needs no HTTP client.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 in its last 32 bits (RFC 6052)
ALLOW_HINT = "set CALLBACK_ALLOW_PRIVATE=true to allow private destinations"


def _cut(value: str, limit: int = 80) -> str:
    """A client's value in a message, cut short (a message never echoes kilobytes)."""
    return value if len(value) <= limit else f"{value[:limit]}…"


class Refused(Exception):
    """The destination may not be called; the message says why, for the client."""


class Unresolvable(Refused):
    """The host does not resolve: refused at submission, retried at delivery (DNS may be
    down for a moment)."""


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_not(ip: Address) -> str | None:
    """Why a callback may not go to `ip` ('a loopback address'); None when it may."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        # A public IPv4 inside an IPv6 prefix Python calls reserved is still public.
        return why_not(inner)
    checks = [
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a private address"),
        (ip.is_private, "a private address"),
        (ip in SHARED, "a shared (carrier-grade NAT) address"),
        (not ip.is_global, "not a public address"),
    ]
    return next((reason for refused, reason in checks if refused), None)


def host_and_port(url: str) -> tuple[str, int]:
    """The host (no brackets) and port of an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"not a valid URL: {_cut(str(exc))}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("not an http(s) URL with a host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to, in the resolver's order, without repeats. Blocking."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:  # ValueError: an IDNA label too long, a NUL
        raise Unresolvable(f"{_cut(host)} does not resolve ({_cut(str(exc))})") from None
    addresses: list[Address] = []
    for *_, sockaddr in found:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])  # no IPv6 zone
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise Unresolvable(f"{_cut(host)} does not resolve")
    return addresses


def vet(url: str, allow_private: bool) -> tuple[str, int, list[Address]]:
    """(host, port, addresses) of a destination that may be called, or `Refused`. Blocking.

    Any one forbidden address refuses the host: connecting to "the other one" would
    leave the choice to whoever controls its DNS.
    """
    host, port = host_and_port(url)
    addresses = resolve(host, port)
    if not allow_private:
        for ip in addresses:
            if reason := why_not(ip):
                name = _cut(host)
                what = f"{name} resolves to {ip}," if str(ip) != host else f"{name} is"
                raise Refused(f"{what} {reason}; {ALLOW_HINT}")
    return host, port, addresses
