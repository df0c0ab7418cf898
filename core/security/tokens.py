"""JWT bearer tokens, as an OAuth2 resource server checks them (PyJWT).

Keys come from INFERQ_JWT_PUBLIC_KEYS (PEM public keys or certificates, or a JWKS document,
inline or in a file) and INFERQ_JWT_SECRET (HS256). Each key accepts only the algorithms of its
own kind (an RSA key: RS256/RS384/RS512/PS256; EC: ES256/ES384/ES512; Ed25519/Ed448: EdDSA; the
secret: HS256), so ``alg: none`` and algorithm confusion (an HS256 token "signed" with the RSA
public key) find no key and are refused. ``exp`` is required; ``nbf``, ``iss`` and ``aud`` are
checked (the last two whenever configured) with a small leeway. The tenant is a claim
(INFERQ_JWT_TENANT_CLAIM, default ``sub``); scopes come from ``scope`` (space-separated) or
``scp`` (a list or a string).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from core.config import Settings
from core.errors import NotConfigured, Unauthorized
from core.security.scopes import known_scopes

MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
MAX_TENANT_CHARS = 200


@dataclass(frozen=True)
class VerificationKey:
    key: Any
    algorithms: tuple[str, ...]
    kid: str | None = None


@dataclass(frozen=True)
class VerifiedToken:
    tenant: str
    subject: str
    scopes: frozenset[str]
    expires_at: datetime


def algorithms_for(key: Any) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("ES256", "ES384", "ES512")
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    raise NotConfigured(f"INFERQ_JWT_PUBLIC_KEYS: a {type(key).__name__} cannot verify JWTs")


def load_public_keys(source: str) -> list[VerificationKey]:
    """PEM text, a JWKS (or one JWK) as JSON, or the path of a file holding either."""
    text = source.strip()
    if not text.startswith(("-----BEGIN", "{")):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise NotConfigured(f"INFERQ_JWT_PUBLIC_KEYS: cannot read {text!r}: {exc}") from exc
    if text.lstrip().startswith("{"):
        return _jwks(text)
    return [_pem(block) for block in _pem_blocks(text)]


def _jwks(text: str) -> list[VerificationKey]:
    try:
        document = json.loads(text)
        found = (
            jwt.PyJWKSet.from_dict(document).keys
            if "keys" in document
            else [jwt.PyJWK.from_dict(document)]
        )
    except (ValueError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
        raise NotConfigured(f"INFERQ_JWT_PUBLIC_KEYS: not a usable JWKS: {exc}") from exc
    keys = []
    for jwk in found:
        if jwk.algorithm_name.startswith("HS"):  # a shared secret has no place in a public set
            raise NotConfigured("INFERQ_JWT_PUBLIC_KEYS holds a symmetric key; use JWT_SECRET")
        keys.append(VerificationKey(jwk.key, (jwk.algorithm_name,), jwk.key_id))
    return keys


def _pem_blocks(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line.startswith("-----END"):
            blocks.append("\n".join(current) + "\n")
            current = []
    if not blocks:
        raise NotConfigured("INFERQ_JWT_PUBLIC_KEYS: no PEM public key or certificate found")
    return blocks


def _pem(block: str) -> VerificationKey:
    try:
        if "CERTIFICATE" in block.splitlines()[0]:
            key: Any = x509.load_pem_x509_certificate(block.encode()).public_key()
        else:
            key = load_pem_public_key(block.encode())
    except ValueError as exc:
        raise NotConfigured(f"INFERQ_JWT_PUBLIC_KEYS: unreadable PEM: {exc}") from exc
    return VerificationKey(key, algorithms_for(key))


class TokenVerifier:
    def __init__(
        self,
        keys: Sequence[VerificationKey],
        *,
        issuer: str | None = None,
        audience: str | None = None,
        tenant_claim: str = "sub",
        leeway_seconds: float = 30.0,
    ) -> None:
        self.keys = list(keys)
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.leeway_seconds = leeway_seconds
        self.required = ["exp", *(["iss"] if issuer else []), *(["aud"] if audience else [])]

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier | None:
        """None when no key is configured: then only API keys are accepted."""
        keys = load_public_keys(settings.jwt_public_keys) if settings.jwt_public_keys else []
        if settings.jwt_secret:
            if len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise NotConfigured(f"INFERQ_JWT_SECRET needs at least {MIN_SECRET_BYTES} bytes")
            keys.append(VerificationKey(settings.jwt_secret.encode(), ("HS256",)))
        if not keys:
            return None
        return cls(
            keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            tenant_claim=settings.jwt_tenant_claim,
            leeway_seconds=settings.jwt_leeway_seconds,
        )

    def verify(self, token: str) -> VerifiedToken:
        claims = self._claims(token)
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or not tenant.strip() or len(tenant) > MAX_TENANT_CHARS:
            raise Unauthorized(f"the token has no usable {self.tenant_claim!r} claim")
        scopes = claims.get("scope", claims.get("scp", ""))
        names = scopes.split() if isinstance(scopes, str) else scopes
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise Unauthorized("the token's scope claim is neither a string nor a list of them")
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        subject = str(claims.get("sub", tenant))
        return VerifiedToken(tenant, subject, known_scopes(names), expires_at)

    def _claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise Unauthorized("the bearer token is neither an API key nor a readable JWT") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        keys = [
            key
            for key in self.keys
            if algorithm in key.algorithms and (kid is None or key.kid in (None, kid))
        ]
        if not keys:
            raise Unauthorized(f"no key here verifies tokens signed with {algorithm!r}")
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[str(algorithm)],
                    issuer=self.issuer,
                    audience=self.audience,
                    leeway=self.leeway_seconds,
                    options={"require": self.required, "verify_aud": self.audience is not None},
                )
                return claims
            except jwt.InvalidSignatureError:
                continue  # another key of the same kind may have signed it
            except jwt.ExpiredSignatureError as exc:
                raise Unauthorized("the token has expired") from exc
            except jwt.ImmatureSignatureError as exc:
                raise Unauthorized("the token is not valid yet (nbf)") from exc
            except jwt.InvalidTokenError as exc:
                raise Unauthorized(f"the token is not accepted: {exc}") from exc
        raise Unauthorized("the token's signature does not verify")
