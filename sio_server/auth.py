"""Password hashing and the signed tokens that carry visitor and agent identity."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .errors import Unauthorized

Role = Literal["visitor", "agent"]

_hasher = PasswordHasher()
# Verifying against this hash when an email is unknown keeps the login time the
# same for known and unknown accounts.
_DUMMY_HASH = _hasher.hash("not a real password")


def hash_password(password: str) -> str:
    """Hash a password with argon2id."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password against its hash; a `None` hash never matches."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(
            password_hash
        )
    except (VerificationError, InvalidHashError):
        return False


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    """Run `verify_password` in a thread, because argon2 takes tens of milliseconds."""
    return await asyncio.to_thread(verify_password, password_hash, password)


@dataclass(frozen=True)
class TokenClaims:
    """The identity a verified token carries."""

    role: Role
    subject: str
    # The agent's token version at issue; a password change raises it.
    version: int = 0


class TokenSigner:
    """Sign and verify HS256 JSON Web Tokens for visitors and agents."""

    _ALGORITHM = "HS256"

    def __init__(self, secret_key: str, agent_ttl_s: int, visitor_ttl_s: int) -> None:
        self._key = secret_key
        self._ttl = {"agent": agent_ttl_s, "visitor": visitor_ttl_s}

    def issue(self, role: Role, subject: str, version: int = 0) -> str:
        """Return a token for `subject` that expires after the role's lifetime."""
        now = int(time.time())
        claims = {
            "sub": subject,
            "role": role,
            "iat": now,
            "exp": now + self._ttl[role],
            "ver": version,
        }
        return jwt.encode(claims, self._key, algorithm=self._ALGORITHM)

    def verify(self, token: object, role: Role) -> TokenClaims:
        """Return the claims of a valid token of `role`, or raise `Unauthorized`."""
        if not isinstance(token, str) or not token or len(token) > 4096:
            raise Unauthorized("token is missing or malformed: sign in again")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._ALGORITHM],
                options={"require": ["sub", "role", "exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token has expired: sign in again") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("token is invalid: sign in again") from exc
        if claims.get("role") != role or not isinstance(claims.get("sub"), str):
            raise Unauthorized(f"token is not valid for role {role!r}: sign in again")
        version = claims.get("ver", 0)
        if not isinstance(version, int):
            raise Unauthorized("token is invalid: sign in again")
        return TokenClaims(role=role, subject=claims["sub"], version=version)
