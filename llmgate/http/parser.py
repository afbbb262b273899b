"""
The upstream answer parser: HTTP/1.1 response framing as a small state
machine, with no I/O.

Implements RFC 9112 section 4 (status line), 5 (field lines, with the
obsolete line folding of 5.2 taken as a space), 6.1-6.3 (message body
length: HEAD, 1xx, 204 and 304 carry no body; Transfer-Encoding wins over
Content-Length; a body read until close), 7.1 (chunked coding, with chunk
extensions and trailer fields skipped) and 9.3 (persistence: ``Connection:
close``, HTTP/1.0 keep-alive); RFC 9110 section 5.5 (a field value holding
CR, LF or NUL is refused) and 8.6 (Content-Length: digits only, a list of
one value).

The states a reader can list, in :data:`STATE_NAMES`: ``IDLE`` (no request
in flight: any byte is an error), ``HEAD`` (reading the status line and
headers), ``LENGTH`` (a body of known length), ``CHUNK_SIZE``,
``CHUNK_DATA``, ``CHUNK_CRLF``, ``TRAILERS`` (a chunked body),
``UNTIL_CLOSE`` (a body that ends with the connection) and ``DONE`` (the
answer is over).  Every framing error is a :class:`UpstreamProtocolError`;
after one, nothing more is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from llmgate.http import twisted_names

# The parser's states.
IDLE, HEAD, LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILERS, UNTIL_CLOSE, DONE = range(9)

#: Each state's name, for logs and tests.
STATE_NAMES = (
    "IDLE", "HEAD", "LENGTH", "CHUNK_SIZE", "CHUNK_DATA", "CHUNK_CRLF", "TRAILERS",
    "UNTIL_CLOSE", "DONE",
)

#: The most a response head (status line and headers) may take.
MAX_HEAD = 65536

#: The longest chunk-size line of a chunked body.
MAX_CHUNK_LINE = 1024

#: What a status code, a chunk size and a Content-Length may look like, and
#: nothing else (``int`` would also take signs, underscores and spaces, and
#: raises on thousands of digits).
_STATUS_CODE = re.compile(rb"[1-5][0-9][0-9]")
_CHUNK_SIZE_FIELD = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _token(name: bytes) -> bytes:
    if not _TOKEN.fullmatch(name):
        raise ValueError(name)
    return name.lower()


#: Header names in Twisted's canonical form, cached: response heads are
#: built straight into a ``Headers``, each name checked to be a token.  On
#: a Twisted without the private encoder, names are checked here and given
#: to ``Headers`` through its public method.
try:
    from twisted.web.http_headers import _nameEncoder

    _canonical: Callable[[bytes], bytes] = _nameEncoder.encode
except ImportError:  # pragma: no cover - a Twisted not tested
    _canonical = _token


def _agreed_length(values: list[bytes]) -> int | None:
    """
    The one length that ``values`` (each possibly a list) agree on, or None
    when one is not 1-18 digits or two differ (RFC 9110, 8.6).
    """
    if len(values) == 1:
        value = values[0]
        if value.isdigit() and len(value) <= 18:
            return int(value)
    lengths = set()
    for value in values:
        for part in value.split(b","):
            part = part.strip(b" \t")
            if not _CONTENT_LENGTH.fullmatch(part):
                return None
            lengths.add(int(part))
    return lengths.pop() if len(lengths) == 1 else None


class UpstreamProtocolError(Exception):
    """
    The upstream broke HTTP/1.1 framing; the connection cannot be trusted.
    """


class Sink(TypingProtocol):
    """
    Who hears what the parser finds.
    """

    def head_received(
        self, minor: int, code: int, phrase: bytes, headers: Headers, length: int | object
    ) -> None: ...

    def body_ended(self, clean: bool) -> None: ...


class ResponseParser:
    """
    Parses the answer to one request at a time.

    ``expect(method)`` starts an answer; ``feed(data)`` parses bytes; body
    bytes gather in :attr:`pieces` (the caller takes them in one piece per
    read: a chunked upstream often sends one event as several chunks in one
    packet).  The sink hears of the head (``head_received``), then of the
    body's end (``body_ended``, ``clean`` false when bytes followed it).
    ``keep_alive`` says whether the answer lets the connection be reused.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.state = IDLE
        self.keep_alive = True
        self.pieces: list[bytes] = []
        self._buffer = b""
        self._method = b""
        self._remaining = 0

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    def expect(self, method: bytes) -> None:
        """
        A request with ``method`` was sent: its answer comes next.
        """
        self.state = HEAD
        self._method = method
        self.keep_alive = True

    def finish(self) -> None:
        """
        Nothing more is parsed (the connection is closing).
        """
        self.state = DONE

    def feed(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        while data:
            state = self.state
            if state == LENGTH:
                remaining = self._remaining
                if len(data) < remaining:
                    self._remaining = remaining - len(data)
                    self.pieces.append(data)
                    return
                body, data = data[:remaining], data[remaining:]
                self._remaining = 0
                if body:
                    self.pieces.append(body)
                self._body_ended(clean=not data)
            elif state == UNTIL_CLOSE:
                self.pieces.append(data)
                return
            elif state == CHUNK_DATA:
                remaining = self._remaining
                if len(data) <= remaining:
                    self._remaining = remaining - len(data)
                    self.pieces.append(data)
                    if self._remaining == 0:
                        self.state = CHUNK_CRLF
                    return
                self.pieces.append(data[:remaining])
                data = data[remaining:]
                self._remaining = 0
                self.state = CHUNK_CRLF
            elif state == CHUNK_CRLF:
                if len(data) < 2:
                    self._buffer = data
                    return
                if data[:2] != b"\r\n":
                    raise self._error("chunk not followed by CRLF")
                data = data[2:]
                self.state = CHUNK_SIZE
            elif state == CHUNK_SIZE:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > MAX_CHUNK_LINE:
                        raise self._error("chunk size line too long")
                    self._buffer = data
                    return
                size_field = data[:end].split(b";", 1)[0].strip(b" \t")
                data = data[end + 2 :]
                if not _CHUNK_SIZE_FIELD.fullmatch(size_field):
                    raise self._error(f"bad chunk size {size_field[:40]!r}")
                size = int(size_field, 16)
                if size == 0:
                    self.state = TRAILERS
                else:
                    self._remaining = size
                    self.state = CHUNK_DATA
            elif state == TRAILERS:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise self._error("trailers too long")
                    self._buffer = data
                    return
                line, data = data[:end], data[end + 2 :]
                if not line:
                    self._body_ended(clean=not data)
            elif state == HEAD:
                # The earlier of CRLF CRLF and a bare-LF blank line (which
                # HTTP/1.1 tolerates): the other may be inside the body.
                end, size = data.find(b"\r\n\r\n"), 4
                bare = data.find(b"\n\n", 0, end if end >= 0 else len(data))
                if bare >= 0:
                    end, size = bare, 2
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise self._error("response head too long")
                    self._buffer = data
                    return
                if end > MAX_HEAD:
                    raise self._error("response head too long")
                head, data = data[:end], data[end + size :]
                self._head(head, clean=not data)
            else:
                if state == DONE and not self.keep_alive:
                    # Bytes after an answer on a connection that closes anyway.
                    return
                raise self._error("upstream sent bytes with no request")

    def _error(self, message: str) -> UpstreamProtocolError:
        self.state = DONE
        self.keep_alive = False
        self._buffer = b""
        return UpstreamProtocolError(message)

    def _head(self, head: bytes, clean: bool) -> None:
        lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
        status = lines[0].split(b" ", 2)
        if (
            len(status) < 2
            or status[0] not in (b"HTTP/1.0", b"HTTP/1.1")
            or not _STATUS_CODE.fullmatch(status[1])
        ):
            raise self._error(f"bad status line {lines[0][:80]!r}")
        minor = 0 if status[0] == b"HTTP/1.0" else 1
        code = int(status[1])
        phrase = status[2] if len(status) > 2 else b""
        # CR, LF or NUL inside a reason or a value (RFC 9110, 5.5): LF ends
        # a line, so a bare CR or a NUL anywhere in the head is one.  Two
        # scans in C for the whole head, not one per field.
        crs = head.count(b"\r") - head.endswith(b"\r")  # a CR before a bare-LF end
        if b"\x00" in head or crs != head.count(b"\r\n"):
            raise self._error("a CR or NUL in the status line or a header")
        fast = twisted_names.FAST_HEADERS
        raw: dict[bytes, list[bytes]] = {}
        encode = _canonical if fast else _token
        length_values: list[bytes] = []
        chunked = False
        transfer_encoded = False
        said_close = said_keep_alive = False
        previous: list[bytes] | None = None
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                # An obsolete folded line continues the previous header.
                if previous is None:
                    raise self._error("folded line before any header")
                previous[-1] = previous[-1] + b" " + line.strip(b" \t")
                continue
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise self._error(f"bad header line {line[:80]!r}")
            value = value.strip(b" \t")
            lower = name.lower()
            if lower == b"content-length":
                length_values.append(value)
                previous = None
                continue
            if lower == b"transfer-encoding":
                transfer_encoded = True
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif lower == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                said_close = said_close or b"close" in tokens
                said_keep_alive = said_keep_alive or b"keep-alive" in tokens
            try:
                key = encode(name)
            except ValueError:
                raise self._error(f"bad header name {name[:80]!r}") from None
            previous = raw.get(key)
            if previous is None:
                previous = raw[key] = [value]
            else:
                previous.append(value)
        headers = Headers()
        if fast:
            headers._rawHeaders = raw
        else:
            for key, values in raw.items():
                for value in values:
                    headers.addRawHeader(key, value)
        if 100 <= code < 200:
            if code == 101:
                raise self._error("upstream switched protocols")
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            return
        # HTTP/1.0 closes unless it asks to keep alive; a close is never undone.
        close = said_close or (minor == 0 and not said_keep_alive)
        length: int | object = UNKNOWN_LENGTH
        if self._method == b"HEAD" or code in (204, 304):
            length = 0
            state = DONE
            declared = _agreed_length(length_values) if code != 204 else None
            if declared is not None:
                # The size of the body a GET would have had: relayed as is
                # (a value that makes no sense is dropped: it frames nothing).
                headers.setRawHeaders(b"Content-Length", [b"%d" % (declared,)])
        elif transfer_encoded:
            # Transfer-Encoding wins over any Content-Length, and the message
            # cannot be trusted to leave the connection clean.
            if length_values:
                close = True
            state = CHUNK_SIZE if chunked else UNTIL_CLOSE
        elif length_values:
            value = length_values[0]
            if len(length_values) == 1 and value.isdigit() and len(value) <= 18:
                declared = int(value)
            else:
                declared = _agreed_length(length_values)
            if declared is None:
                raise self._error(f"bad or conflicting Content-Length {length_values[:3]!r}")
            length = self._remaining = declared
            state = LENGTH if declared else DONE
        else:
            state = UNTIL_CLOSE
        if state == UNTIL_CLOSE:
            close = True
        self.keep_alive = not close
        self.state = state
        self.sink.head_received(minor, code, phrase, headers, length)
        if state == DONE:
            self._body_ended(clean)

    def _body_ended(self, clean: bool) -> None:
        self.state = DONE
        if not clean:
            self.keep_alive = False
        self.sink.body_ended(clean)
