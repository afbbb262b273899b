"""
The upstream forwarder: each client call becomes one request to the
configured upstream over a shared persistent connection pool, and its answer
is relayed back as it arrives.

The forwarder drives an ``IAgent`` itself rather than through
``treq.HTTPClient.request``, which always adds a shared cookie jar, redirect
following and gzip decoding: a proxy must store no cookie between clients,
follow no redirect and pass bodies through intact.  The running gateway's
agent is :class:`llmgate.http.upstream.UpstreamAgent`; tests drive the same code
with ``treq.testing``'s in-memory agent.
"""

from __future__ import annotations


from service_identity import CertificateError, VerificationError
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from llmgate.config import GatewayConfig
from llmgate.http.deadlines import Deadlines
from llmgate.exchange import Exchange, LocalAnswer, RequestRecord, ResponseRecord, new_exchange_id
from llmgate.http.headers import inbound_response_headers, outbound_request_headers
from llmgate.observe import Observer
from llmgate.pipeline import Pipeline
from llmgate.providers import CREDENTIAL_HEADERS, Provider
from llmgate.http.relay import ClientGone, ClientStalled, Relay, StreamIdle
from llmgate.streamusage import UsageChunkHider, request_usage
from llmgate.http.upstream import BODY_METHODS



@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one go.  Replayable, so a
    request can be sent again after a stale pooled connection.
    """

    replayable = True

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def classify(failure: Failure) -> str:
    """
    A short name for why an upstream request failed, for errors and metrics.
    """
    reasons = [failure]
    if isinstance(failure.value, client._WrapperException):
        reasons = list(failure.value.reasons) or reasons
    for reason in reasons:
        if reason.check(neterror.ConnectionRefusedError):
            return "upstream_refused"
        if reason.check(neterror.DNSLookupError):
            return "upstream_dns"
        if reason.check(neterror.TimeoutError):
            return "upstream_connect_timeout"
        if reason.check(StreamIdle):
            return "stream_idle"
        if reason.check(CancelledError):
            return "cancelled"
        if reason.check(VerificationError, CertificateError):
            return "upstream_tls"
        name = type(reason.value).__module__
        if "SSL" in name or "ssl" in name or "tls" in name:
            return "upstream_tls"
    return "upstream_reset"


class Forwarder:
    """
    Forward client requests to the one configured upstream.

    :ivar open_calls: calls in progress by exchange id, for the console,
        metrics and a graceful shutdown.
    """

    log = Logger()

    def __init__(
        self,
        agent: IAgent,
        config: GatewayConfig,
        provider: Provider,
        pipeline: Pipeline,
        clock: IReactorTime,
        capture_limit: int = 1024 * 1024,
    ) -> None:
        self.agent = agent
        self.config = config
        self.provider = provider
        self.pipeline = pipeline
        self.clock = clock
        self.capture_limit = capture_limit
        self.base = config.llm.base_url.encode("utf-8")
        llm = config.llm
        if llm.api_key is not None:
            header = provider.auth_header
            self.credential: tuple[bytes, bytes] | None = (
                header,
                provider.credential(llm.api_key),
            )
            self.strip = CREDENTIAL_HEADERS | {header}
        else:
            self.credential = None
            # A client's gateway token is the gateway's, never the upstream's.
            self.strip = CREDENTIAL_HEADERS if config.auth.enabled else frozenset()
        self.defaults = provider.extra_request_headers()
        self.open_calls: dict[str, Call] = {}
        #: Calls waiting for the head of their answer, up to ``llm.timeout``.
        self.head_deadlines: Deadlines[Call] = Deadlines(
            clock, config.llm.timeout, Call.head_timed_out
        )
        self.include_stream_usage = config.usage.include_stream_usage

    def forward(self, request: Request) -> Deferred[None]:
        """
        Forward one client request and relay its answer.

        :return: a Deferred that fires when the answer is complete (the route
            returns it to Klein); cancelling it means the client went away.
        """
        body = request.content.read() if request.content is not None else b""
        exchange = Exchange(
            id=new_exchange_id(),
            provider=self.provider.name,
            request=RequestRecord(
                method=request.method,
                uri=request.uri,
                headers=request.requestHeaders,
                body=body,
            ),
            received=self.clock.seconds(),
        )
        call = Call(self, request, exchange)
        return call.start()

    def error_answer(self, request: Request, status: int, message: str, kind: str) -> bytes:
        """
        Set a provider-shaped JSON error on ``request`` and return its body.
        """
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return self.provider.error_body(status, message, kind)


class Call:
    """
    One client request on its way through the gateway, from the middleware
    on the way in to the end of the relayed answer.
    """

    log = Logger()

    def __init__(self, forwarder: Forwarder, request: Request, exchange: Exchange) -> None:
        self.forwarder = forwarder
        self.request = request
        self.exchange = exchange
        self.finished: Deferred[None] = Deferred(canceller=self._client_gone)
        self._upstream: Deferred[IResponse] | None = None
        self._timed_out = False
        self._relay: Relay | None = None
        self._observer: Observer | None = None
        self._hide_usage = False
        self._done = False

    def start(self) -> Deferred[None]:
        self.forwarder.open_calls[self.exchange.id] = self
        answer = self.forwarder.pipeline.request_received(self.exchange)
        if answer is None:
            self._send()
        elif isinstance(answer, Deferred):
            answer.addCallback(self._after_request_hooks)
        else:
            self._answer_locally(answer)
        return self.finished

    def _after_request_hooks(self, answer: LocalAnswer | None) -> None:
        if self._done:
            return
        if answer is None:
            self._send()
        else:
            self._answer_locally(answer)

    # -- upstream request ------------------------------------------------------

    def _send(self) -> None:
        forwarder = self.forwarder
        record = self.exchange.request
        if forwarder.include_stream_usage and forwarder.provider.name == "openai":
            changed = request_usage(record.path, self.exchange.request_json)
            if changed is not None:
                # The client's stream stays as it would have been.
                self._hide_usage = True
                record.body = changed
        headers = outbound_request_headers(
            record.headers, forwarder.credential, forwarder.strip, forwarder.defaults
        )
        body = record.body
        producer = BytesProducer(body) if body or record.method in BODY_METHODS else None
        self.exchange.sent_at = forwarder.clock.seconds()
        try:
            self._upstream = forwarder.agent.request(
                record.method, forwarder.base + record.uri, headers, producer
            )
        except Exception:
            self._request_failed(Failure())
            return
        forwarder.head_deadlines.start(self)
        self._upstream.addCallbacks(self._got_response, self._request_failed)

    def head_timed_out(self) -> None:
        """
        No head of an answer came within ``llm.timeout``.
        """
        self._timed_out = True
        if self._upstream is not None:
            self._upstream.cancel()

    def _request_failed(self, failure: Failure) -> None:
        self._upstream = None
        if self._done:
            return
        self._stop_head_deadline()
        exchange = self.exchange
        if self._timed_out:
            kind, status = "upstream_timeout", 504
            message = (
                f"upstream sent no response within {self.forwarder.config.llm.timeout:g}s"
            )
        else:
            kind, status = classify(failure), 502
            message = f"upstream unreachable ({kind.replace('_', ' ')})"
        exchange.error, exchange.error_kind = message, kind
        self.log.warn(
            "{method} {path} failed: {kind}",
            method=exchange.request.method.decode("ascii", "replace"),
            path=exchange.request.path.decode("ascii", "replace"),
            kind=kind,
            exchange_id=exchange.id,
        )
        exchange.sent_status = status
        body = self.forwarder.error_answer(self.request, status, message, kind)
        self._write_and_finish(body)

    # -- the answer -------------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._upstream = None
        self._stop_head_deadline()
        forwarder = self.forwarder
        exchange = self.exchange
        exchange.upstream_headers_at = forwarder.clock.seconds()
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        record = ResponseRecord(
            status=response.code,
            headers=inbound_response_headers(response.headers),
            streaming=content_type.lower().startswith(b"text/event-stream"),
        )
        exchange.response = record
        forwarder.pipeline.response_started(exchange)
        request = self.request
        request.setResponseCode(record.status, response.phrase)
        set_header = request.responseHeaders.setRawHeaders
        for name, values in record.headers:
            set_header(name, values)
        rewrite = UsageChunkHider() if self._hide_usage and record.streaming else None
        if (
            rewrite is None
            and isinstance(response.length, int)
            and request.method != b"HEAD"
            and record.status not in (204, 304)
        ):
            # Twisted's client keeps Content-Length out of the headers; pass
            # it on so the client gets the body framed as the upstream sent it.
            set_header(b"content-length", [b"%d" % (response.length,)])
        if exchange.session_id is not None:
            set_header(b"x-llmgate-session-id", [exchange.session_id.encode("ascii")])
        self._observer = observer = Observer(
            exchange, record, forwarder.pipeline, forwarder.clock, forwarder.capture_limit
        )
        whole = getattr(response, "complete_body", None)
        body = whole() if whole is not None and rewrite is None else None
        if body is not None:
            # The whole answer came with its head: no stream to relay.
            exchange.headers_relayed_at = forwarder.clock.seconds()
            if body:
                request.write(body)
                observer(body)
            self._finish()
            return
        self._relay = relay = Relay(
            request, forwarder.clock, forwarder.config.llm.idle_timeout, observer, rewrite
        )
        exchange.headers_relayed_at = forwarder.clock.seconds()
        relay.done.addCallback(self._relay_ended)
        response.deliverBody(relay)

    def _relay_ended(self, reason: BaseException | None) -> None:
        if self._done:
            return
        exchange = self.exchange
        if reason is None:
            self._finish()
            return
        if isinstance(reason, ClientGone):
            # The channel is closing: the request must not be finished.
            exchange.client_gone = True
            exchange.error, exchange.error_kind = "client disconnected", "client_gone"
            self._complete()
            return
        if isinstance(reason, ClientStalled):
            # It reads nothing, so no end of the answer could reach it: cut it.
            exchange.client_gone = True
            exchange.error, exchange.error_kind = str(reason), "client_stalled"
            self._warn(f"{reason}; connection closed")
            self._cut_client()
            return
        kind = classify(Failure(reason))
        record = exchange.response
        if kind == "stream_idle":
            message = f"upstream stream idle for {self.forwarder.config.llm.idle_timeout:g}s"
        else:
            message = "upstream connection lost mid-answer"
        exchange.error, exchange.error_kind = message, kind
        self._warn(message)
        if record is not None and record.streaming:
            # The SDKs raise on this event; the stream then ends.
            self.request.write(self.forwarder.provider.error_event(message, kind))
            self._finish()
        else:
            # A plain body cut short: end the client's connection without the
            # terminating chunk, so it cannot mistake this for a whole answer.
            self._cut_client()

    def _warn(self, message: str) -> None:
        request = self.exchange.request
        self.log.warn(
            "{method} {path}: {message}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            message=message,
            exchange_id=self.exchange.id,
        )

    def _cut_client(self) -> None:
        """
        End the exchange and abort the client's connection mid-answer.
        """
        self._complete()
        self.request.channel.transport.abortConnection()

    # -- endings ---------------------------------------------------------------

    def _answer_locally(self, answer: LocalAnswer) -> None:
        if self._done:
            return
        self.request.setResponseCode(answer.status)
        for name, value in answer.headers:
            self.request.setHeader(name, value)
        self.exchange.response = ResponseRecord(
            status=answer.status, headers=[(n, [v]) for n, v in answer.headers]
        )
        self.exchange.response.body += answer.body
        self._write_and_finish(answer.body)

    def _write_and_finish(self, body: bytes) -> None:
        self.request.setHeader(b"content-length", b"%d" % (len(body),))
        if self.exchange.session_id is not None:
            self.request.setHeader(
                b"x-llmgate-session-id", self.exchange.session_id.encode("ascii")
            )
        self.request.write(body)
        self._finish()

    def _finish(self) -> None:
        """
        The answer is complete: Klein finishes the request when ``finished``
        fires.
        """
        if self._complete():
            self.finished.callback(None)

    def _complete(self) -> bool:
        if self._done:
            return False
        self._done = True
        self._stop_head_deadline()
        exchange = self.exchange
        exchange.ended_at = self.forwarder.clock.seconds()
        if self._observer is not None:
            self._observer.finish()
        self.forwarder.open_calls.pop(exchange.id, None)
        self.forwarder.pipeline.exchange_finished(exchange)
        return True

    def _client_gone(self, finished: Deferred[None]) -> None:
        """
        The root resource cancelled ``finished``: the client disconnected.
        Stop the upstream request at once, whatever stage it is in.
        """
        if self._done:
            return
        self.exchange.client_gone = True
        if self.exchange.error is None:
            self._stop("client disconnected", "client_gone")
        else:
            self._stop(self.exchange.error, self.exchange.error_kind or "client_gone")

    def abort(self) -> None:
        """
        Cut the call (shutdown timeout): the client's connection is closed
        and the upstream request dropped.
        """
        if self._done:
            return
        self._stop("gateway shutting down", "shutdown")
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    def _stop(self, error: str, kind: str) -> None:
        """
        End the exchange with ``error`` and drop the upstream side.
        """
        self.exchange.error, self.exchange.error_kind = error, kind
        upstream, self._upstream = self._upstream, None
        relay = self._relay
        self._complete()
        if upstream is not None:
            upstream.cancel()
        if relay is not None:
            relay.stop()

    def _stop_head_deadline(self) -> None:
        self.forwarder.head_deadlines.stop(self)


__all__ = ["Forwarder", "Call", "BytesProducer", "Headers"]
