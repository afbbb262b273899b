"""
One call through the gateway (:class:`Call`): the middleware on the way in,
the tries at its route's upstreams (the next one after a failure before an
answer's head), and the relay of the answer, to the end of the exchange.
"""


from __future__ import annotations

from typing import TYPE_CHECKING

from service_identity import CertificateError, VerificationError
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from llmgate.exchange import Attempt, Exchange, LocalAnswer, ResponseRecord
from llmgate.limits import OncePerInterval
from llmgate.http.headers import inbound_response_headers, outbound_request_headers
from llmgate.http.relay import ClientGone, ClientStalled, Relay, StreamIdle
from llmgate.http.upstream import BODY_METHODS
from llmgate.observe import Observer
from llmgate.routing import path_allowed
from llmgate.streamusage import UsageChunkHider, request_usage
from llmgate.upstreams import Upstream

if TYPE_CHECKING:
    from llmgate.forward import Forwarder


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


class _Drain(Protocol):
    """
    Takes the body of an answer the client will not see (one failed over):
    the connection it came on is dropped, since its body is of no use.
    """

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


def _discard(response: IResponse) -> None:
    whole = getattr(response, "complete_body", None)
    if whole is not None and whole() is not None:
        return  # it came whole with its head: the connection stays usable
    response.deliverBody(_Drain())


def _candidates(upstreams: tuple[Upstream, ...]) -> list[Upstream]:
    """
    A route's upstreams to try, in order: the ejected ones skipped, but
    never the last.
    """
    last = upstreams[-1]
    return [u for u in upstreams if u is last or not u.health.ejected()]


class FailoverReport:
    """
    One log line per upstream a minute while calls fail over from it (the
    first at once), with how many did since its last line: many failures
    must not flood the log.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._due = OncePerInterval(clock)

    def failed_over(self, exchange: Exchange, upstream: Upstream, why: str, next: str) -> None:
        due = self._due.due(upstream.name)
        if due is None:
            return
        count, seconds = due
        request = exchange.request
        if not count:
            self.log.info(
                "{method} {path}: upstream {upstream} ({address}) {why}; trying {next} "
                "(its failovers are counted here once a minute while they last)",
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("ascii", "replace"),
                upstream=upstream.name,
                address=upstream.address,
                why=why,
                next=next,
                exchange_id=exchange.id,
            )
        else:
            self.log.info(
                "upstream {upstream} ({address}): {count} call(s) failed over in the last "
                "{seconds:.0f} s; now {method} {path}: {why}; trying {next}",
                upstream=upstream.name,
                address=upstream.address,
                count=count,
                seconds=seconds,
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("ascii", "replace"),
                why=why,
                next=next,
                exchange_id=exchange.id,
            )


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
        #: Upstreams still to try, the current one first.
        self._candidates: list[Upstream] = []
        self._failover_on: frozenset[int] = frozenset()
        self._attempt: Attempt | None = None

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
        exchange = self.exchange
        record = exchange.request
        routed = forwarder.route(exchange)
        if routed is None:
            self._refuse(404, "no route of this gateway matches the call", "no_route")
            return
        route, upstreams = routed
        candidates = _candidates(upstreams)
        if route.restricted:
            candidates = [
                u
                for u in candidates
                if not u.allowed_paths or path_allowed(record.path, u.allowed_paths)
            ]
            if not candidates:
                self._refuse(403, "path not allowed by this gateway", "forbidden_path")
                return
        self._candidates = candidates
        self._failover_on = route.config.failover_on
        if forwarder.include_stream_usage and exchange.provider == "openai-chat":
            changed = request_usage(record.path, exchange.request_json)
            if changed is not None:
                # The client's stream stays as it would have been.
                self._hide_usage = True
                record.body = changed
        self._try()

    def _refuse(self, status: int, message: str, kind: str) -> None:
        exchange = self.exchange
        self.forwarder.refused[kind] += 1
        exchange.error, exchange.error_kind = message, kind
        exchange.sent_status = status
        self._write_and_finish(self.forwarder.error_answer(self.request, status, message, kind))

    def _try(self) -> None:
        """
        Send the call to the first of the remaining candidates.
        """
        forwarder = self.forwarder
        exchange = self.exchange
        record = exchange.request
        upstream = self._candidates[0]
        headers = outbound_request_headers(
            record.headers, upstream.credential, upstream.strip, upstream.defaults
        )
        body = record.body
        producer = BytesProducer(body) if body or record.method in BODY_METHODS else None
        now = forwarder.clock.seconds()
        if exchange.sent_at is None:
            exchange.sent_at = now
        exchange.upstream = upstream.name
        self._attempt = Attempt(upstream.name, upstream.address, now)
        exchange.attempts.append(self._attempt)
        self._timed_out = False
        try:
            self._upstream = upstream.agent.request(
                record.method, upstream.base + record.uri, headers, producer
            )
        except Exception:
            self._request_failed(Failure())
            return
        upstream.head_deadlines.start(self)
        self._upstream.addCallbacks(self._got_response, self._request_failed)

    def head_timed_out(self) -> None:
        """
        No head of an answer came within the upstream's ``timeout``.
        """
        self._timed_out = True
        if self._upstream is not None:
            self._upstream.cancel()

    def _end_attempt(self, outcome: str, status: int | None = None) -> None:
        attempt = self._attempt
        if attempt is not None and attempt.ended is None:
            attempt.ended = self.forwarder.clock.seconds()
            attempt.outcome = outcome
            attempt.status = status
            self._candidates[0].count(outcome)

    def _next(self, why: str) -> bool:
        """
        Go on to the next candidate, if there is one.
        """
        if len(self._candidates) < 2:
            return False
        failed = self._candidates.pop(0)
        self.forwarder.failovers.failed_over(self.exchange, failed, why, self._candidates[0].name)
        self._try()
        return True

    def _request_failed(self, failure: Failure) -> None:
        self._upstream = None
        if self._done:
            return
        self._stop_head_deadline()
        upstream = self._candidates[0]
        exchange = self.exchange
        if self._timed_out:
            kind, status = "upstream_timeout", 504
            message = (
                f"upstream sent no response within {upstream.config.timeout:g}s; "
                f"{upstream.described}"
            )
        else:
            kind, status = classify(failure), 502
            message = (
                f"upstream unreachable ({kind.replace('_', ' ')}); {upstream.described}"
            )
        self._end_attempt(kind)
        if kind != "cancelled":
            upstream.failed()
            if self._next(kind.replace("_", " ")):
                return
        exchange.error, exchange.error_kind = message, kind
        self.log.warn(
            "{method} {path} failed: {message}",
            method=exchange.request.method.decode("ascii", "replace"),
            path=exchange.request.path.decode("ascii", "replace"),
            kind=kind,
            message=message,
            upstream=upstream.name,
            address=upstream.address,
            exchange_id=exchange.id,
        )
        exchange.sent_status = status
        self.request.setHeader(b"x-llmgate-upstream", upstream.name_bytes)
        body = self.forwarder.error_answer(self.request, status, message, kind)
        self._write_and_finish(body)

    # -- the answer -------------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._upstream = None
        self._stop_head_deadline()
        upstream = self._candidates[0]
        status = response.code
        if status in self._failover_on:
            upstream.failed()
            if len(self._candidates) > 1:
                self._end_attempt("failover", status)
                _discard(response)
                self._next(f"answered {status}")
                return
        elif status < 500:
            upstream.health.succeeded()
        else:
            upstream.failed()
        self._end_attempt("answered", status)
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
        set_header(b"x-llmgate-upstream", [upstream.name_bytes])
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
            request, forwarder.clock, upstream.config.idle_timeout, observer, rewrite
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
            if not self._closed_after_end():
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
        upstream = self._candidates[0]
        if kind == "stream_idle":
            message = f"upstream stream idle for {upstream.config.idle_timeout:g}s"
        else:
            message = "upstream connection lost mid-answer"
        message = f"{message}; {upstream.described}"
        exchange.error, exchange.error_kind = message, kind
        self._warn(message)
        if record is not None and record.streaming:
            # The SDKs raise on this event; the stream then ends.
            self.request.write(exchange.api.error_event(message, kind))
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
        if self._closed_after_end():
            self._stop(None, None)
            return
        self.exchange.client_gone = True
        if self.exchange.error is None:
            self._stop("client disconnected", "client_gone")
        else:
            self._stop(self.exchange.error, self.exchange.error_kind or "client_gone")

    def _closed_after_end(self) -> bool:
        """
        Whether a client that hangs up now has had the whole answer: the
        stream's end was relayed and nothing went wrong (Codex closes on
        ``response.completed``, before the upstream ends its body).  Then
        the call is complete, with :attr:`Exchange.closed_after_end` set.
        """
        exchange = self.exchange
        if exchange.stream_ended and exchange.error is None:
            exchange.closed_after_end = True
            return True
        return False

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

    def _stop(self, error: str | None, kind: str | None) -> None:
        """
        End the exchange with ``error`` (None: it is complete) and drop the
        upstream side.
        """
        self.exchange.error, self.exchange.error_kind = error, kind
        pending, self._upstream = self._upstream, None
        relay = self._relay
        self._complete()
        if pending is not None:
            self._end_attempt(kind or "cancelled")
            pending.cancel()
        if relay is not None:
            relay.stop()

    def _stop_head_deadline(self) -> None:
        if self._candidates:
            self._candidates[0].head_deadlines.stop(self)


__all__ = ["Call", "BytesProducer", "FailoverReport", "classify"]
