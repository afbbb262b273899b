"""
The private names of Twisted that llmgate's fast paths lean on, in one place.

The one-step request parser (:mod:`llmgate.http.server`), writes sent at
once (:mod:`llmgate.http.sendnow`) and response heads built straight into a
``Headers`` (:mod:`llmgate.http.parser`) read or set attributes Twisted does
not promise to keep.  Each fast path checks here, once at import, that every
name it needs is still there, and when one is missing takes Twisted's own
public path instead: slower, never wrong.  ``tests/test_twisted_names.py``
fails loudly on a Twisted that lacks one, so an upgrade is noticed; setup.cfg
bounds Twisted above at the first release not tested.
"""

from __future__ import annotations

from twisted.internet import abstract, tcp
from twisted.web import http_headers
from twisted.web.http import HTTPChannel

#: What ``GatewayChannel._whole_request`` reads or sets on ``HTTPChannel``
#: (its parser state, its limits, and what ``allContentReceived`` reads).
CHANNEL_STATE = (
    "_HTTPChannel__first_line",
    "_HTTPChannel__header",
    "_busyReceiving",
    "_transferDecoder",
    "_handlingRequest",
    "_buffer",
    "_receivedHeaderSize",
    "_receivedHeaderCount",
)

#: Set by twisted.web's first-line parsing and read when a request is built.
CHANNEL_REQUEST_LINE = ("_command", "_path", "_version")

#: Private hooks ``GatewayChannel`` overrides to answer with JSON errors.
CHANNEL_HOOKS = (
    "_maybeChooseTransferDecoder",
    "_failChooseTransferDecoder",
    "_respondToBadRequestAndDisconnect",
)

#: What :func:`llmgate.http.sendnow.send_now` reads on a TCP transport.
TCP_WRITE_STATE = ("_aborting", "_writeDisconnected", "_tempDataLen", "dataBuffer")

#: How response heads are built without re-validating every name.
HEADERS = ("_nameEncoder", "_rawHeaders")


def _missing_from_channel() -> list[str]:
    channel = HTTPChannel()
    missing = [name for name in CHANNEL_STATE + CHANNEL_HOOKS if not hasattr(channel, name)]
    # Set by its line parser, read where the request is built: the names its
    # code uses say whether they are still the ones.
    used = set(HTTPChannel.allContentReceived.__code__.co_names)
    used.update(HTTPChannel.lineReceived.__code__.co_names)
    missing += [name for name in CHANNEL_REQUEST_LINE if name not in used]
    return missing


def _missing_from_tcp() -> list[str]:
    descriptor = abstract.FileDescriptor(reactor=object())  # type: ignore[arg-type]
    missing = [
        name
        for name in TCP_WRITE_STATE
        if not hasattr(descriptor, name) and not hasattr(tcp.Connection, name)
    ]
    if not hasattr(tcp.Connection, "writeSomeData"):
        missing.append("writeSomeData")
    return missing


def _missing_from_headers() -> list[str]:
    missing = []
    if not hasattr(http_headers, "_nameEncoder"):
        missing.append("_nameEncoder")
    if not isinstance(getattr(http_headers.Headers(), "_rawHeaders", None), dict):
        missing.append("_rawHeaders")
    return missing


#: Names missing from this Twisted, by fast path; empty on a tested release.
MISSING = {
    "one-step request parser": _missing_from_channel(),
    "send at once": _missing_from_tcp(),
    "response heads": _missing_from_headers(),
}

#: Whether each fast path may run.
ONE_STEP_PARSER = not MISSING["one-step request parser"]
SEND_AT_ONCE = not MISSING["send at once"]
FAST_HEADERS = not MISSING["response heads"]
