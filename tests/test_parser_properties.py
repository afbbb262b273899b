"""
The response parser against Twisted's ``HTTPClientParser``: generated valid
and invalid responses, each fed to both split at random points, must give
the same status, headers, body and framing verdict.

Where llmgate is stricter on purpose (CR or NUL in a value, a Content-Length
of more than 18 digits, a bare-LF head, status codes outside 100-599), the
generator does not go: those are tested as refusals in test_upstream.py.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import HTTPClientParser, Request
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from llmgate.http.parser import DONE, ResponseParser, UpstreamProtocolError

#: Headers Twisted keeps out of ``response.headers``.
CONNECTION_CONTROL = {
    b"content-length", b"connection", b"keep-alive", b"te", b"trailers",
    b"transfer-encoding", b"upgrade", b"proxy-connection",
}

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                max_size=12).map(str.encode)
VALUE = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20
).map(str.encode)
BODY = st.binary(max_size=200)


def chunked(body: bytes, sizes: list[int], extension: bool) -> bytes:
    out, at = [], 0
    for size in sizes:
        piece = body[at : at + size]
        if not piece:
            break
        at += len(piece)
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";x=1" if extension else b"", piece))
    if at < len(body):
        out.append(b"%x\r\n%s\r\n" % (len(body) - at, body[at:]))
    return b"".join(out) + b"0\r\n\r\n"


@st.composite
def responses(draw: Any) -> tuple[bytes, bytes, bool]:
    """
    ``(method, wire bytes, close at the end)``.
    """
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    code = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 429, 500, 503]))
    phrase = draw(st.sampled_from([b"OK", b"Not Found", b"", b"Some Thing"]))
    status = version + b" %d" % (code,) + (b" " + phrase if phrase else draw(st.sampled_from([b"", b" "])))
    headers = [
        (name, value)
        for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=5))
        if name.lower() not in CONNECTION_CONTROL
    ]
    body = draw(BODY)
    framing = draw(st.sampled_from(["length", "chunked", "close", "length-list", "none"]))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % (len(body),)))
        payload = body
    elif framing == "length-list":
        headers += [(b"Content-Length", b"%d, %d" % (len(body), len(body)))]
        payload = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        sizes = draw(st.lists(st.integers(1, 50), max_size=6))
        payload = chunked(body, sizes, draw(st.booleans()))
    elif framing == "close":
        payload = body
    else:
        payload = b""
    if draw(st.booleans()):
        headers.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    # Mutations: what an upstream gets wrong.
    mutation = draw(st.sampled_from(
        ["none"] * 6 + ["bad chunk size", "conflicting lengths", "bad length", "bad status",
                        "extra bytes", "short body"]
    ))
    if mutation == "bad chunk size" and framing == "chunked":
        payload = b"zz\r\n" + payload
    elif mutation == "conflicting lengths" and framing == "length":
        headers.append((b"Content-Length", b"%d" % (len(body) + 1,)))
    elif mutation == "bad length" and framing == "length":
        headers[-1] = (b"Content-Length", draw(st.sampled_from([b"-1", b"1x", b"+5", b""])))
    elif mutation == "bad status":
        status = draw(st.sampled_from([b"HTTP/1.1 2x0 OK", b"HTTP/1.1", b"HTTP/1.1 OK 200"]))
    elif mutation == "extra bytes" and framing in ("length", "chunked"):
        payload += b"HTTP/1.1 200 OK\r\n\r\n"
    elif mutation == "short body" and framing == "length" and body:
        payload = body[:-1]
    head = status + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    return method, head + payload, True


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.reason = reason


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points + [len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


def by_twisted(method: bytes, pieces: list[bytes]) -> dict[str, Any]:
    finished: list[bytes] = []
    parser = HTTPClientParser(Request(method, b"/", Headers(), None), finished.append)
    parser.makeConnection(StringTransport())
    body = Collect()
    result: dict[str, Any] = {"head": None}

    def announced(response: Any) -> None:
        result["head"] = head_of(response.code, response.headers)
        response.deliverBody(body)

    parser._responseDeferred.addCallback(announced)
    extra = False
    try:
        for index, piece in enumerate(pieces):
            parser.dataReceived(piece)
            if finished:
                # As HTTP11ClientProtocol does: the parser is done with.
                extra = bool(finished[0]) or index + 1 < len(pieces)
                if body.reason is None:
                    # HTTP11ClientProtocol ends the body when the parser is done.
                    parser.response._bodyDataFinished()
                break
        else:
            parser.connectionLost(Failure(ConnectionDone()))
    except Exception:
        return {"verdict": "error"}
    if result["head"] is None:
        return {"verdict": "error"}
    if body.reason is None or not body.reason.check(Exception):
        return {"verdict": "error"}
    if body.reason.check(PotentialDataLoss):
        verdict = "until close"
    elif body.reason.check(Exception) and body.reason.type.__name__ == "ResponseDone":
        verdict = "extra bytes" if extra else "complete"
    else:
        return {"verdict": "error"}
    return {"verdict": verdict, "head": result["head"], "body": body.data}


def head_of(code: int, headers: Headers) -> tuple[int, list[tuple[bytes, list[bytes]]]]:
    return code, sorted(
        (name.lower(), list(values))
        for name, values in headers.getAllRawHeaders()
        if name.lower() not in CONNECTION_CONTROL
    )


class Sink:
    def __init__(self) -> None:
        self.head: Any = None
        self.ended: bool | None = None

    def head_received(self, minor: int, code: int, phrase: bytes, headers: Headers,
                      length: Any) -> None:
        self.head = head_of(code, headers)

    def body_ended(self, clean: bool) -> None:
        self.ended = clean


def by_llmgate(method: bytes, pieces: list[bytes]) -> dict[str, Any]:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect(method)
    body = b""
    extra = False
    try:
        for index, piece in enumerate(pieces):
            parser.feed(piece)
            body += b"".join(parser.pieces)
            parser.pieces = []
            if sink.ended is not None:
                extra = not sink.ended or index + 1 < len(pieces)
                parser.finish()
                break
    except UpstreamProtocolError:
        return {"verdict": "error"}
    if sink.head is None:
        return {"verdict": "error"}
    if sink.ended is None:
        # The connection closes here: only a body read until close ends so.
        from llmgate.http.parser import UNTIL_CLOSE

        if parser.state != UNTIL_CLOSE:
            return {"verdict": "error"}
        return {"verdict": "until close", "head": sink.head, "body": body}
    assert parser.state == DONE
    return {"verdict": "extra bytes" if extra else "complete", "head": sink.head, "body": body}


class DifferentialTests(SynchronousTestCase):
    @settings(max_examples=600, deadline=None)
    @given(responses(), st.lists(st.integers(0, 10_000), max_size=6))
    def test_same_verdict_as_twisteds_parser(self, response: Any, cuts: list[int]) -> None:
        method, data, _ = response
        pieces = split(data, cuts)
        ours = by_llmgate(method, pieces)
        theirs = by_twisted(method, pieces)
        self.assertEqual(ours, theirs, (method, data, pieces))

    def test_the_generator_reaches_every_verdict(self) -> None:
        # A differential test whose cases all end the same way proves little.
        verdicts: set[str] = set()

        @settings(max_examples=300, deadline=None)
        @given(responses())
        def collect(response: Any) -> None:
            verdicts.add(by_twisted(response[0], [response[1]])["verdict"])

        collect()
        self.assertEqual(verdicts, {"error", "complete", "extra bytes", "until close"})
