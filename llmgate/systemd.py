"""
The small piece of sd_notify(3) a ``Type=notify`` unit needs: one datagram
to ``$NOTIFY_SOCKET`` per state change.  Twisted has none of its own.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Tell systemd about a state change (``READY=1``, ``STOPPING=1``,
    ``STATUS=...``).

    :return: whether a notification was sent; False when not run by systemd
        (or the socket is gone), which is never an error.
    """
    if environ is None:
        environ = os.environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True
