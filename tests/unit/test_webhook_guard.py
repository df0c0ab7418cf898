"""The SSRF guard: which addresses a webhook may reach, checked at submit and at connect time.

Connect-time tests send real HTTP to a receiver on loopback, through the guarded transport with
an injected resolver, so the test decides what a hostname resolves to (as a rebinding DNS
server would)."""

from __future__ import annotations

import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.errors import InvalidInput
from core.webhooks.guard import (
    BlockedAddress,
    GuardedTransport,
    IPAddress,
    UrlGuard,
    parse_networks,
)
from tests.receiver import Receiver

BLOCKED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.1.2.3": "RFC 1918",
    "172.16.0.1": "RFC 1918",
    "192.168.1.1": "RFC 1918",
    "100.64.0.1": "carrier-grade NAT",
    "169.254.169.254": "link-local (cloud metadata)",
    "0.0.0.0": "this network",
    "224.0.0.251": "multicast",
    "255.255.255.255": "broadcast",
    "240.0.0.1": "reserved",
    "::1": "IPv6 loopback",
    "::": "IPv6 unspecified",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fe80::1": "IPv6 link-local",
    "ff02::1": "IPv6 multicast",
    # IPv4 addresses wrapped in IPv6: mapped, compatible, NAT64, 6to4.
    "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "link-local (cloud metadata)",
    "::ffff:10.0.0.1": "RFC 1918",
    "::127.0.0.1": "loopback",
    "::10.0.0.1": "RFC 1918",
    "64:ff9b::a9fe:a9fe": "link-local (cloud metadata)",
    "2002:7f00:1::1": "loopback",
}


@pytest.mark.parametrize(("address", "rule"), BLOCKED.items())
def test_blocked_ranges_name_the_address_and_rule(address: str, rule: str) -> None:
    reason = UrlGuard().blocked_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert rule in reason
    assert str(ipaddress.ip_address(address)) in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert UrlGuard().blocked_reason(ipaddress.ip_address(address)) is None


def test_allowed_networks_open_only_what_they_name() -> None:
    guard = UrlGuard(parse_networks("127.0.0.0/8, 10.0.0.0/24"))
    assert guard.blocked_reason(ipaddress.ip_address("127.0.0.1")) is None
    assert guard.blocked_reason(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert guard.blocked_reason(ipaddress.ip_address("10.0.0.7")) is None
    assert guard.blocked_reason(ipaddress.ip_address("10.0.1.7")) is not None
    assert guard.blocked_reason(ipaddress.ip_address("::1")) is not None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/hook", "http(s)"),
        ("file:///etc/passwd", "http(s)"),
        ("gopher://example.com:70/", "http(s)"),
        ("https://user:pw@example.com/hook", "user name or password"),
        ("https://user@example.com/hook", "user name or password"),
        ("https://example.com/" + "a" * 2050, "2048"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "IPv6 loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:a9fe:a9fe]/", "cloud metadata"),
        ("http://10.0.0.8/hook", "RFC 1918"),
        ("http://example.com:99999/hook", "not a valid URL"),
        ("https://exämple.com/hook", "ASCII"),
    ],
)
def test_urls_refused_at_submit_say_why(url: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=None) as refused:
        UrlGuard().check_url(url)
    assert says in refused.value.detail


def test_hostnames_pass_submit_and_are_checked_when_connecting() -> None:
    assert UrlGuard().check_url("https://hooks.example.com/inferq?x=1")


def _resolver(*answers: list[str]) -> tuple[list[str], object]:
    """Answers in turn, one per lookup (a rebinding DNS server), recording each lookup."""
    lookups: list[str] = []

    def resolve(host: str, port: int) -> list[IPAddress]:
        lookups.append(host)
        answer = answers[min(len(lookups) - 1, len(answers) - 1)]
        return [ipaddress.ip_address(address) for address in answer]

    return lookups, resolve


def test_every_resolved_address_is_checked_before_connecting() -> None:
    receiver = Receiver().start()
    try:
        guard = UrlGuard(parse_networks("127.0.0.1/32"))
        _, resolve = _resolver(["127.0.0.1", "10.0.0.5"])
        client = httpx.Client(transport=GuardedTransport(guard, resolver=resolve))  # type: ignore[arg-type]
        url = f"http://hooks.test:{receiver.port}/hook"
        with pytest.raises(BlockedAddress, match=r"10\.0\.0\.5 is blocked: private network"):
            client.post(url, content=b"{}")
        assert receiver.requests() == []  # nothing was sent anywhere
    finally:
        receiver.stop()


def test_the_request_goes_to_the_checked_address_with_the_hostname_kept() -> None:
    """A rebinding resolver answers an allowed address first and another one after: the
    transport resolves once and connects to what it checked, so the second answer is never
    used (the receiver listens on 127.0.0.1 only; 127.0.0.2 would refuse the connection)."""
    receiver = Receiver().start()
    try:
        guard = UrlGuard(parse_networks("127.0.0.0/8"))
        lookups, resolve = _resolver(["127.0.0.1"], ["127.0.0.2"])
        client = httpx.Client(transport=GuardedTransport(guard, resolver=resolve))  # type: ignore[arg-type]
        response = client.post(f"http://hooks.test:{receiver.port}/hook", content=b"{}")
        assert response.status_code == 200
        assert lookups == ["hooks.test"]
        (got,) = receiver.requests()
        assert got.headers["host"] == f"hooks.test:{receiver.port}"
        assert got.path == "/hook"
    finally:
        receiver.stop()


def test_a_loopback_hostname_is_blocked_without_an_allowance() -> None:
    receiver = Receiver().start()
    try:
        client = httpx.Client(transport=GuardedTransport(UrlGuard()))
        with pytest.raises(BlockedAddress, match="loopback"):
            client.post(f"http://localhost:{receiver.port}/hook", content=b"{}")
        assert receiver.requests() == []
    finally:
        receiver.stop()


def _tls_server(tmp_path: Path, hostname: str) -> tuple[Receiver, ssl.SSLContext]:
    """An HTTPS receiver on 127.0.0.1 whose certificate names ``hostname`` only, and a client
    context that trusts that certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    receiver = Receiver(tls=server_context).start()
    client_context = ssl.create_default_context(cafile=str(cert_file))
    return receiver, client_context


def test_tls_still_verifies_the_hostname_while_connecting_to_the_pinned_address(
    tmp_path: Path,
) -> None:
    receiver, trust = _tls_server(tmp_path, "hooks.test")
    try:
        guard = UrlGuard(parse_networks("127.0.0.0/8"))
        _, resolve = _resolver(["127.0.0.1"])
        inner = httpx.HTTPTransport(verify=trust)
        client = httpx.Client(transport=GuardedTransport(guard, resolver=resolve, inner=inner))  # type: ignore[arg-type]
        ok = client.post(f"https://hooks.test:{receiver.port}/hook", content=b"{}")
        assert ok.status_code == 200
        # Same address, another name: the certificate does not match, so nothing is sent.
        with pytest.raises(httpx.ConnectError, match="certificate"):
            client.post(f"https://impostor.test:{receiver.port}/hook", content=b"{}")
        assert len(receiver.requests()) == 1
    finally:
        receiver.stop()
