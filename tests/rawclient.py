"""
A raw TCP client for tests that send what HTTP libraries will not.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol


class RawClient(Protocol):
    """
    Collect everything the server sends; ``closed`` fires with it when the
    connection ends.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        if not self.closed.called:
            self.closed.callback(b"".join(self.chunks))
