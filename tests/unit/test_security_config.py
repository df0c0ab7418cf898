"""Pure unit tests (no services): how security settings are read and refused — JWT key sources,
rate limit strings, scope names. The behaviour on live requests is in
tests/integration/test_security.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from core.config import Settings
from core.errors import InvalidInput, NotConfigured
from core.security.ratelimit import parse_rate_limits
from core.security.scopes import DEFAULT_KEY_SCOPES, parse_scopes
from core.security.tokens import TokenVerifier, load_public_keys


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def certificate_pem(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.com")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_keys_of_each_kind_accept_only_their_own_algorithms(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "keys.pem"
    path.write_text(certificate_pem(rsa_key) + public_pem(ec_key))

    keys = load_public_keys(str(path))

    assert [key.algorithms[0] for key in keys] == ["RS256", "ES256"]
    assert all("HS256" not in key.algorithms and "none" not in key.algorithms for key in keys)


def test_a_jwks_with_a_symmetric_key_is_refused() -> None:
    jwks = {"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "alg": "HS256"}]}

    with pytest.raises(NotConfigured, match="symmetric"):
        load_public_keys(json.dumps(jwks))


def test_a_short_hs256_secret_and_an_unreadable_key_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotConfigured, match="32 bytes"):
        TokenVerifier.from_settings(Settings(jwt_secret="too-short"))
    with pytest.raises(NotConfigured, match="cannot read"):
        TokenVerifier.from_settings(Settings(jwt_public_keys=str(tmp_path / "missing.pem")))
    assert TokenVerifier.from_settings(Settings()) is None  # no key: API keys only


def test_a_token_verifies_with_the_key_its_kid_names() -> None:
    first, second = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid}
            for key, kid in ((first, "a"), (second, "b"))
        ]
    }
    verifier = TokenVerifier(load_public_keys(json.dumps(jwks)))
    exp = int(dt.datetime.now(dt.UTC).timestamp()) + 60
    token = jwt.encode(
        {"sub": "acme", "exp": exp, "scope": "jobs:read x:y"}, second, "ES256", {"kid": "b"}
    )

    verified = verifier.verify(token)

    assert verified.tenant == "acme" and verified.scopes == {"jobs:read"}


def test_rate_limit_strings_parse_per_class_and_name_their_mistakes() -> None:
    table = parse_rate_limits("jobs:write=20/second,600/minute; default=3000/minute")

    assert [item.amount for item in table["jobs:write"]] == [20, 600]
    assert table["default"][0].get_expiry() == 60
    assert parse_rate_limits("") == {}
    with pytest.raises(InvalidInput, match="jobs:fly"):
        parse_rate_limits("jobs:fly=1/second")
    with pytest.raises(InvalidInput, match="600/minute"):
        parse_rate_limits("jobs:write=lots")


def test_scopes_must_be_known_and_keys_default_to_all_but_admin() -> None:
    assert parse_scopes("jobs:read, jobs:write") == {"jobs:read", "jobs:write"}
    assert "admin" not in DEFAULT_KEY_SCOPES and len(DEFAULT_KEY_SCOPES) == 6
    with pytest.raises(InvalidInput, match="unknown scope"):
        parse_scopes("jobs:read,root")
    with pytest.raises(InvalidInput, match="at least one"):
        parse_scopes(" , ")


def test_the_command_line_imports_no_metrics_client_before_a_command_runs() -> None:
    """`inferq worker` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported; if
    importing the CLI (its key and tenant commands name the scopes) pulled it in first, pool
    processes would count in memory and the worker's /metrics would be empty."""
    import subprocess
    import sys

    code = "import sys, cli.main; assert 'prometheus_client' not in sys.modules"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
