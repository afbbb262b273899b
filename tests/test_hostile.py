"""
Hostile input over real sockets: raw bytes written to a running gateway on
loopback, one parametrized case each, all against the same gateway so that
"the daemon stays up" means something.

For every case:

- every answer is a 4xx, or the connection is closed without any answer
  (a few cases name the other statuses they allow, and why);
- no answer carries a Python traceback, an HTML page or the server
  software's name, nor the upstream key or the client token;
- every error the gateway makes is JSON;
- the upstream never receives more requests than the case allows, and never
  a smuggled one;
- the gateway logs no unexpected failure while handling it;
- the next good call succeeds.

The fake upstream here is strict the way real provider APIs are (malformed
JSON gets 400), so a malformed body the gateway relays unchanged is still
answered with a 4xx; and it answers ``TRACE`` by echoing the request, as a
misconfigured server would.

Set ``LLMGATE_HOSTILE_REPORT=<path>`` to get the outcome table as a file; it
is also printed by the last test (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import globalLogPublisher
from twisted.web import server
from twisted.web.server import Site

from llmgate import config as configuration
from llmgate.service import GatewayParts
from tests.rawclient import RawClient
from tests.fakeupstream import FakeUpstream, Seen

KEY = "sk-hostile-UPSTREAM-key-5e0c8d7a"
TOKEN = "gw-hostile-CLIENT-token-91f3b2c4"
T = TOKEN.encode()

#: Bound on every socket wait.
WAIT = 4.0
#: Small, so a request left incomplete is answered (408) in well under WAIT.
REQUEST_TIMEOUT = 0.5
MAX_BODY = 4096
MAX_HEADERS = 20
MAX_HEADER_BYTES = 4096

API_PATHS = (b"/v1/chat/completions", b"/v1/messages", b"/v1/responses")


def within(d: Deferred, seconds: float = WAIT) -> Deferred:
    return d.addTimeout(seconds, reactor)


# -- a strict fake upstream -------------------------------------------------------------


def _json_error(request: server.Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


class StrictUpstream(FakeUpstream):
    """
    The fake upstream, as strict as a provider API about bodies: a chat call
    whose body is not a JSON object with a string ``model`` and a list of
    ``messages`` gets 400.  It never crashes into an HTML page (any error of
    its own is a JSON 500), and it answers TRACE by echoing the request.
    Every answer carries ``x-upstream: strict`` so a test can tell relayed
    answers from the gateway's own.
    """

    def render(self, request: server.Request) -> Any:
        request.setHeader(b"x-upstream", b"strict")
        body = request.content.read()
        request.content.seek(0)
        if request.method == b"TRACE":
            self._record(request, body)
            request.setHeader(b"content-type", b"message/http")
            lines = [b"%s %s HTTP/1.1" % (request.method, request.uri)]
            for name, values in request.requestHeaders.getAllRawHeaders():
                lines += [name + b": " + value for value in values]
            return b"\r\n".join(lines) + b"\r\n\r\n"
        if request.method == b"POST" and request.path in API_PATHS:
            problem = _problem(body)
            if problem is not None:
                self._record(request, body)
                return _json_error(request, 400, problem)
        try:
            return super().render(request)
        except Exception as error:  # a fake's own crash: JSON, never HTML
            return _json_error(request, 500, f"fake upstream crashed: {type(error).__name__}")

    def _record(self, request: server.Request, body: bytes) -> None:
        self.seen.append(
            Seen(
                method=request.method,
                uri=request.uri,
                headers={k.lower(): list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
                body=body,
            )
        )


def _problem(body: bytes) -> str | None:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "body is not valid JSON"
    if not isinstance(document, dict):
        return "body must be a JSON object"
    if not isinstance(document.get("model"), str):
        return "model must be a string"
    if not isinstance(document.get("messages", []), list):
        return "messages must be a list"
    return None


# -- one gateway for the whole run ----------------------------------------------------------


@attrs.define
class Target:
    port: int
    url: str
    upstream: StrictUpstream
    parts: GatewayParts
    failures: list[dict[str, Any]]


@pytest.fixture(scope="module")
def target(tmp_path_factory: Any) -> Iterator[Target]:
    upstream = StrictUpstream(reactor)
    upstream_site = Site(upstream)
    upstream_site.noisy = False
    upstream_port = reactor.listenTCP(0, upstream_site, interface="127.0.0.1")
    traces = tmp_path_factory.mktemp("hostile-traces")
    config = configuration.parse(
        {
            "server": {
                "request_timeout": REQUEST_TIMEOUT,
                "max_request_body": MAX_BODY,
                "max_headers": MAX_HEADERS,
                "max_header_bytes": MAX_HEADER_BYTES,
            },
            "llm": {
                "base_url": f"http://127.0.0.1:{upstream_port.getHost().port}",
                "api_key": KEY,
                "timeout": 5,
            },
            "auth": {"tokens": [TOKEN]},
            # The parsers of every middleware see the hostile bodies too.
            "middlewares": [
                {"type": "trace", "config": {"directory": str(traces)}},
                {"type": "printer", "config": {"log_body": True}},
            ],
        }
    )
    parts = GatewayParts(config, reactor)
    port = reactor.listenTCP(0, parts.site, interface="127.0.0.1")
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    number = port.getHost().port
    yield Target(number, f"http://127.0.0.1:{number}", upstream, parts, failures)
    globalLogPublisher.removeObserver(observe)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(parts.pipeline.close())
    pytest_twisted.blockon(parts.close_pools())
    pytest_twisted.blockon(upstream_port.stopListening())


# -- a raw client ------------------------------------------------------------------------------




@attrs.frozen
class Response:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@attrs.frozen
class Received:
    raw: bytes
    responses: tuple[Response, ...]
    #: The gateway closed the connection (rather than our read timing out).
    closed: bool
    #: Bytes after the last response that did not parse as one.
    trailing: bytes


@inlineCallbacks
def send_raw(port: int, payload: bytes, wait: float = WAIT) -> Any:
    """
    Write ``payload`` on a fresh connection and read until the gateway
    closes it, or ``wait`` seconds pass.
    """
    client = RawClient()
    yield within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client))
    client.transport.write(payload)
    closed = True
    try:
        raw = yield client.closed.addTimeout(wait, reactor)
    except TimeoutError:
        closed = False
        raw = b"".join(client.chunks)
        client.transport.abortConnection()
    responses, trailing = parse_responses(raw)
    return Received(raw, tuple(responses), closed, trailing)


def parse_responses(data: bytes) -> tuple[list[Response], bytes]:
    responses = []
    while data.startswith(b"HTTP/"):
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            break
        status_line, *lines = head.split(b"\r\n")
        status = int(status_line.split(b" ")[1])
        headers = []
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        response_headers = dict(headers)
        if response_headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, rest = _dechunk(rest)
        elif b"content-length" in response_headers:
            length = int(response_headers[b"content-length"])
            body, rest = rest[:length], rest[length:]
        else:
            body, rest = rest, b""
        responses.append(Response(status, tuple(headers), body))
        data = rest
    return responses, data


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    payload = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            _, _, data = data.partition(b"\r\n")
            return b"".join(payload), data
        payload.append(data[:size])
        data = data[size + 2 :]


# -- the cases ------------------------------------------------------------------------------------


def head(*lines: bytes, auth: bool = True, close: bool = True) -> bytes:
    """
    A request head from its lines (request line first), with the client
    token and ``Connection: close`` added unless asked not to.
    """
    lines = list(lines)
    if auth:
        lines.insert(1, b"Authorization: Bearer " + T)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


CHAT = b"POST /v1/chat/completions HTTP/1.1"
HOST = b"Host: gateway"
GOOD_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
#: A complete request, with a valid token, that must never reach the upstream
#: as a request of its own when it rides inside another one.
SMUGGLED = head(b"GET /smuggled HTTP/1.1", HOST)


@attrs.frozen
class Case:
    id: str
    data: bytes
    #: Status classes every answer must be in (4: 4xx...).
    allowed: frozenset[int] = frozenset({4})
    #: Requests the upstream may receive for this case.
    forwarded: int = 0
    note: str = ""
    bug: str | None = None


def case(id: str, data: bytes, **kwargs: Any) -> Case:
    return Case(id, data, **kwargs)


CASES = [
    # -- request line --------------------------------------------------------------------------
    case("request-line garbage", b"garbage garbage garbage\r\n\r\n"),
    case("request-line bad method token", head(b"G(T /v1/models HTTP/1.1", HOST)),
    case("HTTP/0.9 request", b"GET /v1/models\r\n\r\n"),
    case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    case("HTTP/2.0 version", head(b"GET /v1/models HTTP/2.0", HOST)),
    case("HTTP/1.x version", head(b"GET /v1/models HTTP/1.x", HOST)),
    case("double space in request line", head(b"GET  /v1/models  HTTP/1.1", HOST)),
    case("tabs in request line", head(b"GET\t/v1/models\tHTTP/1.1", HOST)),
    case("leading empty lines", b"\r\n\r\n" + head(b"GET /v1/models HTTP/1.1", HOST)),
    case("TLS ClientHello on plain port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 32),
    case("bare LF line endings", b"GET /v1/models HTTP/1.1\nHost: g\nAuthorization: Bearer " + T + b"\n\n"),
    # -- request target --------------------------------------------------------------------------
    case("NUL in target", head(b"GET /v1/mo\x00dels HTTP/1.1", HOST)),
    case("space in target", head(b"GET /v1/mo dels HTTP/1.1", HOST)),
    case("invalid UTF-8 0xff in target", head(b"GET /v1/mod\xffels HTTP/1.1", HOST)),
    case(
        "invalid UTF-8 0x80 in target",
        head(b"GET /v1/mod\x80els HTTP/1.1", HOST),
        bug="BUG-TARGET-BYTES: bytes 0x7f-0xb0 pass Twisted's request-line check, the "
        "agent then raises in Call._send: HTML 500 and a leaked open_calls entry",
    ),
    case(
        "DEL 0x7f in target",
        head(b"GET /v1/mod\x7fels HTTP/1.1", HOST),
        bug="BUG-TARGET-BYTES",
    ),
    case(
        "percent-encoded invalid UTF-8",
        head(b"GET /v1/mod%ff%fe%00els HTTP/1.1", HOST),
        forwarded=1,
        note="a valid target: relayed, the upstream answers 404",
    ),
    case("absolute-form target", head(b"GET http://evil.example/v1/models HTTP/1.1", HOST)),
    case("absolute-form with userinfo", head(b"GET http://u:p@evil.example/v1/models HTTP/1.1", HOST)),
    case("absolute-form to an admin path", head(b"GET http://evil.example/config HTTP/1.1", HOST)),
    case("authority-form CONNECT", head(b"CONNECT evil.example:443 HTTP/1.1", b"Host: evil.example:443")),
    case("at-sign target", head(b"GET @evil.example/v1/models HTTP/1.1", HOST)),
    case(
        "OPTIONS *",
        head(b"OPTIONS * HTTP/1.1", HOST),
        allowed=frozenset({2, 4}),
        note="twisted.web answers OPTIONS * itself (200, empty); nothing is relayed",
    ),
    # -- methods ----------------------------------------------------------------------------------
    case(
        "TRACE relayed to upstream",
        head(b"TRACE /v1/models HTTP/1.1", HOST),
        bug="BUG-METHODS: any method is relayed (the PROXY_METHODS check went with "
        "Klein's catch-all route); TRACE echoes the injected key back to the client",
    ),
    case("CONNECT with a path", head(b"CONNECT /v1/models HTTP/1.1", HOST), bug="BUG-METHODS"),
    case("made-up method", head(b"FOO /v1/models HTTP/1.1", HOST), bug="BUG-METHODS"),
    case("lower-case method", head(b"get /v1/models HTTP/1.1", HOST), bug="BUG-METHODS"),
    # -- header syntax -------------------------------------------------------------------------
    case("header without colon", head(b"GET /v1/models HTTP/1.1", HOST, b"NoColonHere")),
    case("header with empty name", head(b"GET /v1/models HTTP/1.1", HOST, b": value")),
    case("space inside header name", head(b"GET /v1/models HTTP/1.1", HOST, b"X Bad: v")),
    case("NUL in header name", head(b"GET /v1/models HTTP/1.1", HOST, b"X-B\x00ad: v")),
    case("invalid UTF-8 in header name", head(b"GET /v1/models HTTP/1.1", HOST, b"X-\xff: v")),
    case("NUL in header value", head(b"GET /v1/models HTTP/1.1", HOST, b"X-Bad: a\x00b")),
    case(
        "CR injection in header value",
        head(b"GET /v1/models HTTP/1.1", HOST, b"X-Bad: a\rAuthorization: Bearer other"),
    ),
    case(
        "LF injection in header value",
        head(b"GET /v1/models HTTP/1.1", HOST, b"X-Bad: a\nX-Injected: b"),
    ),
    case(
        "CRLF injection of a second request",
        head(b"GET /v1/models HTTP/1.1", HOST, b"X-Bad: a\r\n\r\nGET /smuggled HTTP/1.1")[:-4]
        + b"\r\n\r\n",
        allowed=frozenset({2, 4}),
        forwarded=1,
        note="the CRLF ends the head: the GET is relayed, /smuggled is a request of its own "
        "without a token (401), never relayed",
    ),
    case(
        "invalid UTF-8 in header value",
        head(b"GET /v1/models HTTP/1.1", HOST, b"X-Bad: \xff\xfe\xc3("),
        allowed=frozenset({2}),
        forwarded=1,
        note="obs-text is legal in field values (RFC 9110 5.5): relayed as opaque bytes",
    ),
    case(
        "obs-fold continuation line",
        head(b"GET /v1/models HTTP/1.1", HOST, b"X-A: a", b" Authorization: Bearer other"),
        allowed=frozenset({2}),
        forwarded=1,
        note="folded into X-A with a space (RFC 9112 5.2 allows it); no header is injected",
    ),
    case("too many headers", head(b"GET /v1/models HTTP/1.1", HOST, *[b"X-H%d: v" % i for i in range(40)])),
    case(
        "head too large",
        head(b"GET /v1/models HTTP/1.1", HOST, *[b"X-H%d: %s" % (i, b"v" * 300) for i in range(15)]),
    ),
    case(
        "one 20 KiB header line",
        head(b"GET /v1/models HTTP/1.1", HOST, b"X-Long: " + b"a" * 20000),
        note="beyond LineReceiver.MAX_LENGTH: closed without an answer (see BUG-LONG-LINE)",
    ),
    case(
        "20 KiB request target",
        head(b"GET /v1/" + b"a" * 20000 + b" HTTP/1.1", HOST),
        note="closed without an answer (see BUG-LONG-LINE)",
    ),
    case(
        "Host missing",
        head(b"GET /v1/models HTTP/1.1"),
        allowed=frozenset({2}),
        forwarded=1,
        note="accepted (RFC 9112 3.2 says 400); Host never routes here",
    ),
    case(
        "Host twice",
        head(b"GET /v1/models HTTP/1.1", HOST, b"Host: evil.example"),
        note="RFC 9112 3.2: 400",
    ),
    case(
        "Content-Length of 5000 digits",
        head(CHAT, HOST, b"Content-Length: " + b"9" * 5000) + b"{}",
        note="413, not int()'s ValueError",
    ),
    case(
        "Content-Length of 5000 digits, mostly zeros",
        head(CHAT, HOST, b"Content-Length: " + b"0" * 4999 + b"2") + b"{}",
        note="400",
    ),
    # -- Content-Length -----------------------------------------------------------------------
    case("Content-Length twice, different", head(CHAT, HOST, b"Content-Length: 5", b"Content-Length: 6") + b"hello!"),
    case("Content-Length twice, same", head(CHAT, HOST, b"Content-Length: 5", b"Content-Length: 5") + b"hello"),
    case("Content-Length list", head(CHAT, HOST, b"Content-Length: 5, 5") + b"hello"),
    case("Content-Length negative", head(CHAT, HOST, b"Content-Length: -1") + b"hello"),
    case("Content-Length with plus sign", head(CHAT, HOST, b"Content-Length: +5") + b"hello"),
    case("Content-Length in hex", head(CHAT, HOST, b"Content-Length: 0x5") + b"hello"),
    case("Content-Length non-ASCII digits", head(CHAT, HOST, b"Content-Length: \xd9\xa5") + b"hello"),
    case("Content-Length huge", head(CHAT, HOST, b"Content-Length: 99999999999999999999999999") + b"x"),
    case("Content-Length over the limit", head(CHAT, HOST, b"Content-Length: %d" % (MAX_BODY + 1)) + b"x" * 100),
    case(
        "Expect 100-continue over the limit",
        head(CHAT, HOST, b"Expect: 100-continue", b"Content-Length: %d" % (MAX_BODY * 2)),
    ),
    case("body shorter than Content-Length", head(CHAT, HOST, b"Content-Length: 100") + b"{}"),
    # -- Transfer-Encoding and smuggling --------------------------------------------------------
    case(
        "CL.TE smuggling",
        head(CHAT, HOST, b"Content-Length: 4", b"Transfer-Encoding: chunked", close=False)
        + b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE.CL smuggling",
        head(CHAT, HOST, b"Transfer-Encoding: chunked", b"Content-Length: 3", close=False)
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
    ),
    case(
        "TE.TE xchunked",
        head(CHAT, HOST, b"Transfer-Encoding: xchunked", close=False) + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE.TE chunked plus bogus second header",
        head(CHAT, HOST, b"Transfer-Encoding: chunked", b"Transfer-encoding: x", close=False)
        + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE.TE space before colon",
        head(CHAT, HOST, b"Transfer-Encoding : chunked", close=False) + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE.TE tab before colon",
        head(CHAT, HOST, b"Transfer-Encoding\t: chunked", close=False) + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE.TE vertical tab after value",
        head(CHAT, HOST, b"Transfer-Encoding: chunked\x0b", close=False) + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE.TE truncated name value",
        head(CHAT, HOST, b"Transfer-Encoding: chunk", close=False) + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE.TE obs-folded header",
        head(CHAT, HOST, b"X-A: a", b" Transfer-Encoding: chunked") + b"0\r\n\r\n",
        forwarded=1,
        note="folded into X-A: the POST has no body (upstream 400); Connection: close drops the rest",
    ),
    case(
        "TE.TE leading-space value",
        head(CHAT, HOST, b"Transfer-Encoding:  chunked", b"Content-Length: 5", close=False)
        + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE chunked, identity in one header",
        head(CHAT, HOST, b"Transfer-Encoding: chunked, identity", close=False)
        + b"0\r\n\r\n" + SMUGGLED,
    ),
    case(
        "TE chunked then identity on two lines",
        head(CHAT, HOST, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", close=False)
        + b"0\r\n\r\n" + SMUGGLED,
        bug="BUG-TE-IDENTITY (low): Twisted ignores 'identity', so chunked is not the final "
        "coding yet the request is accepted (RFC 9112 6.3 says 400)",
    ),
    case(
        "TE identity alone",
        head(CHAT, HOST, b"Transfer-Encoding: identity", close=False) + SMUGGLED,
        bug="BUG-TE-IDENTITY (low): an unknown coding should get 501/400, not an empty body",
    ),
    case("TE gzip, chunked", head(CHAT, HOST, b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n"),
    case(
        "TE chunked twice",
        head(CHAT, HOST, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
    ),
    case(
        "upper-case TE and CL",
        head(CHAT, HOST, b"TRANSFER-ENCODING: CHUNKED", b"CONTENT-LENGTH: 5") + b"0\r\n\r\n",
    ),
    case("chunk size not hex", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"zz\r\nhello\r\n0\r\n\r\n"),
    case("chunk size negative", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"-5\r\nhello\r\n0\r\n\r\n"),
    case("chunk size 0x prefix", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"0x5\r\nhello\r\n0\r\n\r\n"),
    case("chunk size plus sign", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"+5\r\nhello\r\n0\r\n\r\n"),
    case("chunk size trailing space", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"5 \r\nhello\r\n0\r\n\r\n"),
    case(
        "chunk size 2**80",
        head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"ffffffffffffffffffff\r\nhello",
        note="accepted as a size; the body never comes: 408 (BUG-CHUNK-SIZE: 413 at once would do)",
    ),
    case("chunk size 5000 zeros", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"0" * 5000 + b"5\r\nhello\r\n0\r\n\r\n"),
    case("chunk data overrun", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"5\r\nhelloXX0\r\n\r\n"),
    case("chunk lines with bare LF", head(CHAT, HOST, b"Transfer-Encoding: chunked") + b"5\nhello\n0\n\n"),
    case(
        "chunked body over the limit",
        head(CHAT, HOST, b"Transfer-Encoding: chunked") + (b"400\r\n" + b"x" * 1024 + b"\r\n") * 5 + b"0\r\n\r\n",
    ),
    # -- bodies ----------------------------------------------------------------------------------------
    case(
        "malformed JSON body",
        head(CHAT, HOST, b"Content-Length: 12") + b'{"model": [}',
        forwarded=1,
        note="relayed byte for byte; the upstream answers 400",
    ),
    case(
        "invalid UTF-8 in JSON body",
        head(CHAT, HOST, b"Content-Length: 15") + b'{"model": "\xff\xfe"}',
        forwarded=1,
        note="relayed byte for byte; the upstream answers 400",
    ),
    case(
        "JSON nested 4000 deep",
        head(CHAT, HOST, b"Content-Length: 4000") + b"[" * 4000,
        forwarded=1,
        note="the gateway's own parsers give up quietly (RecursionError caught); upstream 400",
    ),
    case(
        "JSON array body",
        head(CHAT, HOST, b"Content-Length: 7") + b"[1,2,3]",
        forwarded=1,
        note="relayed; the upstream answers 400",
    ),
    case(
        "JSON wrong types",
        (lambda b: head(CHAT, HOST, b"Content-Length: %d" % len(b)) + b)(
            json.dumps({"model": 5, "messages": "hi", "stream": "yes", "system": [None]}).encode()
        ),
        forwarded=1,
        note="the session and usage parsers take it; the upstream answers 400",
    ),
    case(
        "JSON messages of wrong shapes",
        (lambda b: head(CHAT, HOST, b"Content-Length: %d" % len(b)) + b)(
            json.dumps(
                {
                    "model": "m",
                    "messages": [1, None, "x", [], {"role": 5}, {"role": "tool", "content": {"a": 1}},
                                 {"role": "assistant", "tool_calls": [None, {"function": [1]}]}],
                    "stream": True,
                }
            ).encode()
        ),
        allowed=frozenset({2}),
        forwarded=1,
        note="a valid object the upstream accepts: the session parser must take any shape",
    ),
    case(
        "JSON with NUL and lone surrogates",
        (lambda b: head(CHAT, HOST, b"Content-Length: %d" % len(b)) + b)(
            b'{"model": "m\\u0000", "messages": [{"role": "user", "content": "\\ud800\\udfff\\ud800"}]}'
        ),
        allowed=frozenset({2}),
        forwarded=1,
        note="valid JSON; digests use surrogatepass",
    ),
    # -- connection-level --------------------------------------------------------------------------------
    case(
        "pipelined garbage after a good call",
        head(b"GET /v1/models HTTP/1.1", HOST, close=False) + b"\x00\x01\x02 garbage\r\n\r\n",
        allowed=frozenset({2, 4}),
        forwarded=1,
        note="200 for the good call, then 400",
    ),
    case(
        "h2c upgrade",
        head(b"GET /v1/models HTTP/1.1", HOST, b"Connection: close",
             b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
             b"HTTP2-Settings: AAMAAABkAAQAAP__", close=False),
        allowed=frozenset({2}),
        forwarded=1,
        note="Upgrade is hop-by-hop: dropped, the call relayed as HTTP/1.1",
    ),
    case("no token at all", head(b"GET /v1/models HTTP/1.1", HOST, auth=False)),
]

BUGS = {c.id: c.bug for c in CASES if c.bug}


def _params() -> list[Any]:
    params = []
    for item in CASES:
        marks = []
        # item.bug names the finding a case proved; all are fixed now.
        params.append(pytest.param(item, id=item.id, marks=marks))
    return params


#: Outcomes by case id, for the table.
OUTCOMES: dict[str, str] = {}


def describe(received: Received, forwarded: list[Seen]) -> str:
    parts = []
    for response in received.responses:
        origin = "upstream" if response.header(b"x-upstream") == b"strict" else "gateway"
        parts.append(f"{response.status} ({origin})")
    text = " + ".join(parts) if parts else "no answer"
    if received.trailing:
        text += f" + {len(received.trailing)} unparsed bytes"
    text += ", closed" if received.closed else ", kept open"
    text += f"; relayed {len(forwarded)}"
    return text


FORBIDDEN = re.compile(rb"traceback|<html|twisted|file \"", re.IGNORECASE)


@pytest.mark.parametrize("item", _params())
@pytest_twisted.inlineCallbacks
def test_hostile_input(target: Target, item: Case) -> Any:
    before = len(target.upstream.seen)
    failures_before = len(target.failures)
    open_before = set(target.parts.forwarder.open_calls)
    received = yield send_raw(target.port, item.data)
    forwarded = target.upstream.seen[before:]
    OUTCOMES[item.id] = describe(received, forwarded)

    # An answer, or a clean close; never a hang.
    assert received.responses or received.closed, OUTCOMES[item.id]
    assert not received.trailing, received.raw[-300:]
    for response in received.responses:
        assert response.status // 100 in item.allowed, OUTCOMES[item.id]
        if response.status >= 400:
            assert response.header(b"content-type") == b"application/json", response
            json.loads(response.body)
    # Nothing that names the software, shows a traceback or an HTML page;
    # the Server header is left to its own test below.
    shown = b"\r\n".join(
        line for line in received.raw.split(b"\r\n") if not line.lower().startswith(b"server:")
    )
    assert not FORBIDDEN.search(shown), shown[:500]
    assert KEY.encode() not in received.raw
    assert T not in received.raw

    # The upstream got no more than the case allows, and never a smuggled request.
    assert len(forwarded) <= item.forwarded, [(s.method, s.uri) for s in forwarded]
    assert not any(b"smuggled" in s.uri for s in forwarded)
    assert all(T not in b"".join(v for vs in s.headers.values() for v in vs) for s in forwarded)
    # No call the gateway took stayed open.
    assert set(target.parts.forwarder.open_calls) <= open_before
    # Nothing went unexpectedly wrong inside.
    assert target.failures[failures_before:] == []

    # And the gateway still serves a good call.
    response = yield within(
        treq.post(
            target.url + "/v1/chat/completions",
            data=GOOD_BODY,
            headers={"content-type": ["application/json"], "authorization": [b"Bearer " + T]},
            persistent=False,
        )
    )
    assert response.code == 200
    yield within(treq.content(response))


@pytest_twisted.inlineCallbacks
def test_no_answer_names_the_server_software(target: Target) -> Any:
    received = yield send_raw(target.port, head(b"GET /health HTTP/1.1", HOST))
    assert received.responses[0].status == 200
    assert b"twisted" not in received.raw.lower()


@pytest_twisted.inlineCallbacks
def test_bad_target_bytes_cannot_exhaust_the_concurrency_limit(make_gateway: Any) -> Any:
    gateway = make_gateway(server__max_concurrent=2)
    port = int(gateway.url.rsplit(":", 1)[1])
    for _ in range(2):
        yield send_raw(port, head(b"GET /v1/mod\x80els HTTP/1.1", HOST, auth=False))
    response = yield within(treq.get(gateway.url + "/v1/models", persistent=False))
    yield within(treq.content(response))
    assert response.code == 200


def test_zz_outcome_table(request: Any) -> None:
    """
    The table of what each case got, for the report; and a check that every
    case selected in this session ran far enough to record its outcome (a
    case that errors in its setup would otherwise go unseen here).
    """
    selected = {
        item.callspec.id
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_hostile_input"
    }
    assert selected <= set(OUTCOMES), sorted(selected - set(OUTCOMES))
    rows = ["| # | case | outcome | expected | note |", "|---|---|---|---|---|"]
    for number, item in enumerate(CASES, 1):
        expected = "/".join(f"{c}xx" for c in sorted(item.allowed))
        expected += f", relay <= {item.forwarded}"
        note = item.note
        if item.bug:
            note = (note + " " if note else "") + "XFAIL " + item.bug.split(":")[0]
        rows.append(
            f"| {number} | {item.id} | {OUTCOMES.get(item.id, 'not run')} | {expected} | {note} |"
        )
    table = "\n".join(rows)
    print(f"\n{len(CASES)} hostile cases\n{table}")
    path = os.environ.get("LLMGATE_HOSTILE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
