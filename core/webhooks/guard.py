"""The SSRF guard (OWASP SSRF cheat sheet): where a webhook may be sent.

At submit, a URL is refused when it is not plain http(s), carries userinfo, is too long, or names
an IP literal in a blocked range. At connect time ``GuardedTransport`` resolves the host, checks
**every** address and sends the request to a checked address, so DNS rebinding cannot swap the
address between the check and the connection; TLS still verifies the certificate against the
hostname (SNI). Redirects are never followed (the client's default, kept).

Hand-written on purpose: the SSRF-filtering packages on PyPI wrap ``requests`` or an older httpx,
and none checks the IPv4-embedding IPv6 forms (mapped, compatible, NAT64, 6to4, Teredo) that
this guard unwraps. The pinning uses only public httpx/httpcore features (the ``sni_hostname``
request extension and an explicit Host header).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from core.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_CHARS = 2048

BLOCKED: tuple[tuple[str, IPNetwork], ...] = tuple(
    (rule, ipaddress.ip_network(cidr))
    for rule, cidr in (
        ("loopback", "127.0.0.0/8"),
        ("private network (RFC 1918)", "10.0.0.0/8"),
        ("private network (RFC 1918)", "172.16.0.0/12"),
        ("private network (RFC 1918)", "192.168.0.0/16"),
        ("carrier-grade NAT (RFC 6598)", "100.64.0.0/10"),
        ("link-local (cloud metadata)", "169.254.0.0/16"),
        ("this network", "0.0.0.0/8"),
        ("multicast", "224.0.0.0/4"),
        ("broadcast", "255.255.255.255/32"),
        ("reserved", "240.0.0.0/4"),
        ("IETF protocol assignments", "192.0.0.0/24"),
        ("documentation", "192.0.2.0/24"),
        ("documentation", "198.51.100.0/24"),
        ("documentation", "203.0.113.0/24"),
        ("benchmarking", "198.18.0.0/15"),
        ("IPv6 unspecified", "::/128"),
        ("IPv6 loopback", "::1/128"),
        ("IPv6 unique local (ULA)", "fc00::/7"),
        ("IPv6 link-local", "fe80::/10"),
        ("IPv6 site-local", "fec0::/10"),
        ("IPv6 multicast", "ff00::/8"),
        ("IPv6 documentation", "2001:db8::/32"),
        ("IPv6 discard-only", "100::/64"),
    )
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")


class BlockedAddress(Exception):
    """A webhook's host resolved to an address the guard blocks; the delivery is not retried."""


def parse_networks(spec: str) -> list[IPNetwork]:
    """``INFERQ_WEBHOOK_ALLOWED_NETWORKS``: CIDRs separated by commas."""
    try:
        return [ipaddress.ip_network(part.strip()) for part in spec.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"INFERQ_WEBHOOK_ALLOWED_NETWORKS: {exc}") from exc


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64) or (
        address in _COMPATIBLE and int(address) > 1  # :: and ::1 are rules of their own
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class UrlGuard:
    allowed: Sequence[IPNetwork] = ()

    def blocked_reason(self, address: IPAddress) -> str | None:
        """Why this address may not be reached, or None when it may."""
        inner = embedded_ipv4(address)
        forms = [address] if inner is None else [address, inner]
        if any(form in network for form in forms for network in self.allowed):
            return None
        for form in forms:
            for rule, network in BLOCKED:
                if form.version == network.version and form in network:
                    return _reason(address, form, f"{rule} ({network})")
        # What the packet reaches is the embedded IPv4 address when there is one.
        target = inner or address
        if not target.is_global:
            return _reason(address, target, "not globally routable")
        return None

    def check_url(self, url: str) -> str:
        """Submit-time checks: what can be known without resolving the host."""
        if len(url) > MAX_URL_CHARS:
            raise InvalidInput(f"webhook_url has {len(url)} characters; the limit is 2048")
        if not url.isascii() or not url.isprintable():
            raise InvalidInput(
                "webhook_url must be printable ASCII (percent-encode other characters)"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            raise InvalidInput(f"webhook_url is not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("webhook_url must be an absolute http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise InvalidInput("webhook_url must not carry a user name or password")
        literal = _ip_literal(parts.hostname)
        if literal is not None and (reason := self.blocked_reason(literal)) is not None:
            raise InvalidInput(f"webhook_url is not allowed: {reason}")
        return url


def _reason(address: IPAddress, form: IPAddress, rule: str) -> str:
    shown = str(address) if form is address else f"{address} (IPv4 {form})"
    return f"address {shown} is blocked: {rule}"


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


Resolver = Callable[[str, int], Iterable[IPAddress]]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to, in the resolver's order, without duplicates."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    found: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in found:
            found.append(address)
    return found


class GuardedTransport(httpx.BaseTransport):
    """Resolve, check every address, then send to a checked address (never re-resolved)."""

    def __init__(
        self,
        guard: UrlGuard,
        *,
        resolver: Resolver = resolve,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.guard = guard
        self.resolver = resolver
        self.inner = inner or httpx.HTTPTransport(retries=0)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            addresses = list(self.resolver(host, port))
        except OSError as exc:
            raise httpx.ConnectError(f"could not resolve {host}: {exc}", request=request) from exc
        if not addresses:
            raise httpx.ConnectError(f"{host} resolved to no address", request=request)
        for address in addresses:
            if (reason := self.guard.blocked_reason(address)) is not None:
                raise BlockedAddress(f"{host} resolves to {reason}")
        error: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=request.headers,  # keeps Host: the original name
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return self.inner.handle_request(pinned)
            except httpx.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    def close(self) -> None:
        self.inner.close()
