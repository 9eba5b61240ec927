"""The HS256 token codec, checked against PyJWT and against forged tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from sio_server.auth import TokenSigner
from sio_server.errors import Unauthorized

KEY = "a-secret-key-of-forty-three-characters-xyz"
SUBJECT = "0192a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b"


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(KEY, agent_ttl_s=3600, visitor_ttl_s=86400)


def segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: Any, claims: Any, key: str = KEY) -> str:
    """Return a token with any header and claims, signed with HS256."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    digest = hmac.digest(key.encode(), signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{segment(digest)}"


def claims(**changes: Any) -> dict[str, Any]:
    # A year ahead: parametrized cases build their claims at collection,
    # long before a slow run reaches them.
    now = int(time.time())
    expires = now + 365 * 86400
    return {"sub": SUBJECT, "role": "agent", "iat": now, "exp": expires} | changes


def rejected(signer: TokenSigner, token: object, role: str = "agent") -> str:
    with pytest.raises(Unauthorized) as caught:
        signer.verify(token, role)  # type: ignore[arg-type]
    return caught.value.message


def test_issued_token_verifies(signer: TokenSigner) -> None:
    token = signer.issue("agent", SUBJECT, version=3)
    verified = signer.verify(token, "agent")
    assert verified.subject == SUBJECT
    assert verified.role == "agent"
    assert verified.version == 3


def test_pyjwt_reads_issued_token(signer: TokenSigner) -> None:
    before = int(time.time())
    token = signer.issue("visitor", SUBJECT)
    decoded = jwt.decode(token, KEY, algorithms=["HS256"])
    assert decoded["sub"] == SUBJECT
    assert decoded["role"] == "visitor"
    assert decoded["ver"] == 0
    assert decoded["exp"] - decoded["iat"] == 86400
    assert decoded["iat"] >= before
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def test_pyjwt_token_verifies(signer: TokenSigner) -> None:
    token = jwt.encode(claims(ver=2), KEY, algorithm="HS256")
    verified = signer.verify(token, "agent")
    assert verified.subject == SUBJECT
    assert verified.version == 2


def test_other_key_rejected(signer: TokenSigner) -> None:
    token = forge({"alg": "HS256"}, claims(), key="another-key")
    assert rejected(signer, token) == "token is invalid: sign in again"


def test_changed_claims_rejected(signer: TokenSigner) -> None:
    header, _, signature = signer.issue("visitor", SUBJECT).split(".")
    changed = segment(claims(role="visitor", sub="someone-else"))
    assert "invalid" in rejected(signer, f"{header}.{changed}.{signature}", "visitor")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none"},
        {"alg": "HS512"},
        {"alg": "hs256"},
        {"typ": "JWT"},
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "b64": False},
        ["HS256"],
        "HS256",
    ],
)
def test_header_rejected(signer: TokenSigner, header: Any) -> None:
    assert (
        rejected(signer, forge(header, claims())) == "token is invalid: sign in again"
    )


def test_unsigned_token_rejected(signer: TokenSigner) -> None:
    token = f"{segment({'alg': 'none'})}.{segment(claims())}."
    assert "invalid" in rejected(signer, token)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b",
        "a.b.c.d",
        "a..c",
        # Padding and the standard alphabet's characters are not base64url.
        "eyJhbGciOiJIUzI1NiJ9=.e30.c2ln",
        "eyJhbGciOiJIUzI1NiJ9.e3+.c2ln",
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln ",
        "éé.éé.éé",
    ],
)
def test_malformed_token_rejected(signer: TokenSigner, token: str) -> None:
    assert rejected(signer, token) == "token is invalid: sign in again"


@pytest.mark.parametrize("token", [None, 5, "", ["a.b.c"], "x" * 4097])
def test_missing_token_rejected(signer: TokenSigner, token: object) -> None:
    assert rejected(signer, token) == "token is missing or malformed: sign in again"


def test_signature_spelling_checked(signer: TokenSigner) -> None:
    """Only the canonical base64url of the signature passes.

    The last character of a 43-character signature carries two unused bits,
    so other letters decode to the same bytes.
    """
    token = signer.issue("agent", SUBJECT)
    head, last = token[:-1], token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(last)
    for other in alphabet[index - index % 4 : index - index % 4 + 4]:
        if other != last:
            assert "invalid" in rejected(signer, head + other)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        [1, 2],
        "a string",
        claims(exp=None),
        claims(exp="9999999999"),
        claims(exp=True),
        claims(exp=1e400),
        claims(nbf="0"),
        claims(ver="1"),
        claims(ver=False),
        {"sub": SUBJECT, "role": "agent"},
    ],
)
def test_invalid_claims_rejected(signer: TokenSigner, payload: Any) -> None:
    token = forge({"alg": "HS256", "typ": "JWT"}, payload)
    assert "invalid" in rejected(signer, token)


def test_expired_token_rejected(signer: TokenSigner) -> None:
    now = int(time.time())
    token = forge({"alg": "HS256"}, claims(iat=now - 100, exp=now - 1))
    assert rejected(signer, token) == "token has expired: sign in again"


def test_early_token_rejected(signer: TokenSigner) -> None:
    token = forge({"alg": "HS256"}, claims(nbf=int(time.time()) + 60))
    assert rejected(signer, token) == "token is not valid yet: sign in again"


def test_token_of_other_role_rejected(signer: TokenSigner) -> None:
    token = signer.issue("visitor", SUBJECT)
    message = rejected(signer, token, "agent")
    assert message == "token is not valid for role 'agent': sign in again"


def test_token_without_subject_rejected(signer: TokenSigner) -> None:
    token = forge({"alg": "HS256"}, claims(sub=5))
    assert (
        rejected(signer, token) == "token is not valid for role 'agent': sign in again"
    )


def test_fractional_times_accepted(signer: TokenSigner) -> None:
    """RFC 7519 allows a NumericDate with a fraction of a second."""
    now = time.time()
    token = jwt.encode(claims(exp=now + 60.5, nbf=now - 0.5), KEY, algorithm="HS256")
    assert signer.verify(token, "agent").subject == SUBJECT


def test_fractional_expiry_checked(signer: TokenSigner) -> None:
    token = forge({"alg": "HS256"}, claims(exp=time.time() - 0.5))
    assert rejected(signer, token) == "token has expired: sign in again"
