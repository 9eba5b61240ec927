"""Payload schemas of every client event, and the parser that maps errors to codes."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from .errors import InvalidPayload, PayloadTooLarge

MAX_TEXT_CHARS = 4000
MAX_METADATA_BYTES = 8192
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _encodable(value: str) -> str:
    # JSON can carry lone UTF-16 surrogates, which no UTF-8 database accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "invalid_text", "text contains a lone surrogate code point"
        ) from exc
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank_text", "text is empty or only whitespace")
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise PydanticCustomError("invalid_email", "not an email address")
    return value


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        encoded = json.dumps(value, allow_nan=False)
    except ValueError as exc:
        raise PydanticCustomError(
            "invalid_metadata", "metadata must not contain NaN or Infinity"
        ) from exc
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "payload_too_large", f"metadata exceeds {MAX_METADATA_BYTES} bytes as JSON"
        )
    return value


Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_encodable)
]
ClientId = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(_encodable)
]
ShortText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(_encodable),
    AfterValidator(_not_blank),
]
MessageText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS),
    AfterValidator(_encodable),
    AfterValidator(_not_blank),
]
PersonName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, strip_whitespace=True),
    AfterValidator(_encodable),
]
Shortcut = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", max_length=32)
]
Comment = Annotated[
    str,
    StringConstraints(max_length=1000, strip_whitespace=True),
    AfterValidator(_encodable),
]
Email = Annotated[
    str,
    StringConstraints(min_length=3, max_length=254, strip_whitespace=True),
    AfterValidator(_encodable),
    AfterValidator(_email),
]


class Payload(BaseModel):
    # Strict: "1" is not a number and 1 is not a string. Extra fields are
    # allowed by the contract and ignored.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class JoinQueue(Payload):
    department: ShortText | None = None
    message: MessageText | None = None
    client_id: ClientId | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_small_metadata)] | None = None


class AgentReady(Payload):
    max_chats: Annotated[int, Field(ge=1, le=50)] | None = None
    departments: Annotated[list[ShortText], Field(max_length=50)] | None = None


class AgentAway(Payload):
    pass


class SendMessage(Payload):
    chat_id: Identifier
    text: MessageText
    client_id: ClientId


class Typing(Payload):
    chat_id: Identifier
    typing: bool


class Read(Payload):
    chat_id: Identifier
    seq: Annotated[int, Field(ge=0)]


class History(Payload):
    chat_id: Identifier
    after_seq: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class EndChat(Payload):
    chat_id: Identifier
    reason: ShortText | None = None


class LeaveMessage(Payload):
    text: MessageText
    email: Email
    name: PersonName | None = None
    department: ShortText | None = None
    client_id: ClientId | None = None


class RateChat(Payload):
    chat_id: Identifier
    score: Annotated[int, Field(ge=1, le=5)]
    comment: Comment | None = None


class TransferChat(Payload):
    chat_id: Identifier
    agent_id: Identifier | None = None
    department: ShortText | None = None


class AddNote(Payload):
    chat_id: Identifier
    text: MessageText
    client_id: ClientId


class ListNotes(Payload):
    chat_id: Identifier


class WatchChat(Payload):
    chat_id: Identifier


class CannedResponseBody(Payload):
    shortcut: Shortcut
    text: MessageText


class MissedReply(Payload):
    text: MessageText
    client_id: ClientId | None = None


Password = Annotated[str, StringConstraints(min_length=10, max_length=1024)]


class AgentCreate(Payload):
    email: Email
    name: PersonName
    password: Password
    is_admin: bool = False


class AgentUpdate(Payload):
    name: PersonName | None = None
    is_admin: bool | None = None
    disabled: bool | None = None
    max_chats: Annotated[int, Field(ge=1, le=50)] | None = None
    # An explicit null serves every department.
    departments: Annotated[list[ShortText], Field(max_length=50)] | None = None


class PasswordReset(Payload):
    password: Password


class PasswordChange(Payload):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    new_password: Password


class VisitorAuth(Payload):
    role: Literal["visitor"]
    token: Annotated[str, StringConstraints(max_length=4096)] | None = None
    name: PersonName | None = None
    email: Email | None = None


class AgentAuth(Payload):
    role: Literal["agent"]
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    # An admin's socket that only watches chats, as the admin page opens.
    observer: bool = False


class Login(Payload):
    email: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


P = TypeVar("P", bound=Payload)


def parse_payload(model: type[P], args: tuple[Any, ...]) -> P:
    """Validate the arguments of an event as one payload object.

    No argument counts as `{}`, so events without fields can be sent bare.
    Raise `PayloadTooLarge` for an oversize text and `InvalidPayload` otherwise.
    """
    if len(args) > 1:
        raise InvalidPayload(f"expected one payload object, got {len(args)} arguments")
    data = args[0] if args else {}
    if not isinstance(data, dict):
        raise InvalidPayload(
            f"payload must be a JSON object, got {type(data).__name__}"
        )
    return parse_object(model, data)


def parse_object(model: type[P], data: Any) -> P:
    """Validate one decoded JSON value against `model`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _payload_error(exc) from exc


def _payload_error(exc: ValidationError) -> InvalidPayload | PayloadTooLarge:
    errors = exc.errors(include_url=False, include_input=False)
    for error in errors:
        if error["type"] == "payload_too_large" or (
            error["type"] == "string_too_long" and error["loc"][:1] == ("text",)
        ):
            if error["type"] == "string_too_long":
                return PayloadTooLarge(
                    f"text is longer than {MAX_TEXT_CHARS} characters: split it"
                )
            return PayloadTooLarge(f"{_field(error['loc'])}: {error['msg']}")
    first = errors[0]
    return InvalidPayload(f"{_field(first['loc'])}: {first['msg']}")


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "payload"
