"""Outgoing mail for replies to missed chats, behind an interface.

The server ships without a mail transport: `LogMailer` records that a mail
would go out, without its text, and reports it as not sent. A deployment that
sends mail implements `Mailer` over its SMTP relay or mail API.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

logger = logging.getLogger("sio_server.mail")


class Mailer(ABC):
    """Sends one plain-text mail to a visitor."""

    @abstractmethod
    async def send(self, to: str, subject: str, body: str) -> bool:
        """Send the mail; return whether a transport accepted it."""


class LogMailer(Mailer):
    """Logs each mail instead of sending it."""

    async def send(self, to: str, subject: str, body: str) -> bool:
        logger.info(
            "no mail transport is set up: a reply to a visitor (%d characters)"
            " was stored but not mailed",
            len(body),
        )
        return False
