"""Access tokens: RS256 JWTs signed by the devstack tenant key, published as JWKS."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

SIGNING_KEY_BITS = 2048
TOKEN_LEEWAY_S = 0  # Key Vault/Graph reject a token the second it expires


class TokenIssuer:
    """Signs access tokens and verifies them for the resource servers of devstack.

    When ``record_path`` is set, every issued token is appended to it, so the test suite can
    scan its own output for leaked tokens.
    """

    def __init__(self, issuer_base: str, tenant_id: str, *, record_path: Path | None = None) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=SIGNING_KEY_BITS)
        self.kid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.issuer = f"{issuer_base}/{tenant_id}/v2.0"
        self.tenant_id = tenant_id
        self._record_path = record_path
        self._record_lock = threading.Lock()

    def jwks(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def issue(
        self,
        *,
        audience: str,
        app_id: str,
        object_id: str,
        roles: list[str],
        lifetime_s: int,
        now: float | None = None,
    ) -> tuple[str, int]:
        """Return ``(token, expires_at_epoch)``."""
        issued_at = int(now if now is not None else time.time())
        expires_at = issued_at + lifetime_s
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": self.issuer,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "tid": self.tenant_id,
            "appid": app_id,
            "azp": app_id,
            "oid": object_id,
            "sub": object_id,
            "idtyp": "app",
            "ver": "2.0",
            "uti": uuid.uuid4().hex[:22],
        }
        if roles:
            claims["roles"] = roles
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})
        self.record(token)
        return token, expires_at

    def record(self, value: str) -> None:
        """Append a token or secret value to the hygiene record (when recording)."""
        if self._record_path is not None:
            with self._record_lock, self._record_path.open("a") as out:
                out.write(value.replace("\n", "\\n") + "\n")

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Verify signature, issuer, audience and expiry; raise ``jwt.InvalidTokenError`` otherwise."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            audience=[audience, audience.rstrip("/") + "/"],
            issuer=self.issuer,
            leeway=TOKEN_LEEWAY_S,
        )
        return claims
