"""Exception tree: every error a client can see carries a stable wire code."""

from __future__ import annotations

from typing import Any


class ChatServerError(Exception):
    """Root of the server's own exceptions."""


class ConfigError(ChatServerError):
    """A `CHAT_*` setting is missing or invalid."""


class StoreInUse(ChatServerError):
    """Another server process already serves a store that allows only one."""


class ChatError(ChatServerError):
    """An error reported to a client as `{"code", "message"}`."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        """Return the `error` object of an `ok: false` reply."""
        return {"code": self.code, "message": self.message}


class InvalidPayload(ChatError):
    code = "invalid_payload"
    http_status = 400


class NotFound(ChatError):
    code = "not_found"
    http_status = 404


class Forbidden(ChatError):
    code = "forbidden"
    http_status = 403


class WrongState(ChatError):
    code = "wrong_state"
    http_status = 409


class TransferRejected(WrongState):
    """The target agent of a transfer cannot take the chat now.

    `reason` is one of `same_agent`, `agent_offline`, `agent_away`,
    `agent_full` and `department`, so a client can explain it without parsing
    the message.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "reason": self.reason}


class RateLimited(ChatError):
    """A limit was reached; the client may retry after `retry_after_s` seconds."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "retry_after_s": self.retry_after_s}


class PayloadTooLarge(ChatError):
    code = "payload_too_large"
    http_status = 413


class ServerClosing(ChatError):
    """The server is shutting down; the client retries after reconnecting."""

    code = "internal_error"
    http_status = 503


class ServerBusy(ChatError):
    """Another node held a chat or person too long; the client retries."""

    code = "internal_error"
    http_status = 503


class Unauthorized(ChatError):
    """A token is missing, malformed, expired, or refers to no existing account."""

    code = "unauthorized"
    http_status = 401


class InvalidAuth(ChatError):
    """The handshake `auth` object does not have the expected shape."""

    code = "invalid_auth"
    http_status = 400
