"""
The printer middleware: one log line per request and one per response,
through ``twisted.logger`` with format fields, so the JSON log format keeps
every value as a field of its own.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from twisted.logger import Logger, LogLevel

from llmgate.config import Section
from llmgate.exchange import Exchange
from llmgate.middleware import Middleware, MiddlewareContext
from llmgate.redact import Scrubber

#: Characters of a body shown with ``log_body``.
BODY_PREVIEW = 2000


def build(config: Mapping[str, Any], context: MiddlewareContext) -> "PrinterMiddleware":
    section = Section(dict(config), "")
    section.allow({"log_requests", "log_responses", "log_body", "max_body_chars"})
    # Lines at info are dropped when the log level is above it: then build
    # none (the cost is in making the event, not in writing it).
    quiet = context.config.logging.level in ("warn", "error", "critical")
    return PrinterMiddleware(
        log_requests=section.boolean("log_requests", True) and not quiet,
        log_responses=section.boolean("log_responses", True),
        errors_only=quiet,
        log_body=section.boolean("log_body", False),
        max_body_chars=section.integer("max_body_chars", BODY_PREVIEW, 0, 10**7),
        scrubber=Scrubber([context.config.llm.api_key]),
    )


def _preview(body: bytes | bytearray, limit: int, scrub: Scrubber) -> str:
    # Scrubbed before it is cut (a key across the cut would keep its start):
    # the window reaches past the cut by the longest secret.
    window = limit * 4 + scrub.longest
    text = bytes(body[:window]).decode("utf-8", "replace")
    if len(text) > limit or len(body) > window:
        return scrub.cut(text, limit) + f"... [{len(body)} bytes]"
    return scrub(text)


class PrinterMiddleware(Middleware):
    name = "printer"
    log = Logger()

    def __init__(
        self,
        log_requests: bool = True,
        log_responses: bool = True,
        log_body: bool = False,
        max_body_chars: int = BODY_PREVIEW,
        scrubber: Scrubber | None = None,
        errors_only: bool = False,
    ) -> None:
        self.errors_only = errors_only
        self.log_requests = log_requests
        self.log_responses = log_responses
        self.log_body = log_body
        self.max_body_chars = max_body_chars
        self.scrub = scrubber or Scrubber()
        self.lines = 0
        # One logger for the middleware's life: ``self.log`` makes a new one
        # on every access.
        self._log = Logger(namespace=self.log.namespace, source=self)
        self._publish = self._log.observer

    def request_received(self, exchange: Exchange) -> None:
        if not self.log_requests:
            return None
        request = exchange.request
        fields: dict[str, Any] = dict(
            exchange_id=exchange.id,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            model=exchange.model,
            stream=exchange.stream_requested,
            session_id=exchange.session_id,
            body_bytes=len(request.body),
        )
        if self.log_body:
            fields["body"] = _preview(request.body, self.max_body_chars, self.scrub)
            self._emit(LogLevel.info, _REQUEST_LINE + " body={body}", fields)
        else:
            self._emit(LogLevel.info, _REQUEST_LINE, fields)
        self.lines += 1
        return None

    def exchange_finished(self, exchange: Exchange) -> None:
        if not self.log_responses or (self.errors_only and exchange.error is None):
            return
        request = exchange.request
        response = exchange.response
        usage = exchange.usage or {}
        status = response.status if response is not None else exchange.sent_status
        fields: dict[str, Any] = dict(
            exchange_id=exchange.id,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=status,
            duration_ms=_ms(exchange.duration),
            ttfb_ms=_ms(exchange.ttfb),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            session_id=exchange.session_id,
            error=exchange.error,
            events=response.event_count if response is not None else 0,
        )
        text = _RESPONSE_LINE
        if exchange.error is not None:
            text += _ERROR_PART
        if self.log_body and response is not None:
            if response.streaming:
                body = "".join(event.data for event in response.events).encode("utf-8")
            else:
                body = bytes(response.body)
            text += _BODY_PART
            fields["body"] = _preview(body, self.max_body_chars, self.scrub)
        # Fields keep their real values (None included) for JSON logs; the
        # text shows "-" where there is none.
        shown = _SHOWN
        fields.update([(shown[k], "-" if v is None else v) for k, v in fields.items()])
        self._emit(LogLevel.warn if exchange.error is not None else LogLevel.info, text, fields)
        self.lines += 1

    def _emit(self, level: LogLevel, text: str, fields: dict[str, Any]) -> None:
        """
        What ``Logger.emit`` does with an event, without re-checking a level
        that is one of two constants here (Twisted sorts the levels on every
        call to check): two lines a call, made on the reactor thread.
        """
        fields.update(
            log_logger=self._log,
            log_level=level,
            log_namespace=self._log.namespace,
            log_source=self,
            log_format=text,
            log_time=time.time(),
        )
        self._publish(fields)

    def state(self) -> Mapping[str, Any]:
        return {
            "log_requests": self.log_requests,
            "log_responses": self.log_responses,
            "log_body": self.log_body,
            "lines_logged": self.lines,
        }


_REQUEST_LINE = (
    "-> {method} {path} model={model} stream={stream} session={session_id} id={exchange_id}"
)

#: The response line's format; each field shown through its ``*_shown``
#: twin ("-" for None), the real value kept under its own name.
_RESPONSE_LINE = (
    "<- {status_shown} {method_shown} {path_shown} {duration_ms_shown}ms "
    "ttfb={ttfb_ms_shown}ms tokens={input_tokens_shown}/{output_tokens_shown} "
    "session={session_id_shown} id={exchange_id_shown}"
)
_ERROR_PART = " error={error_shown}"
_SHOWN = {
    name: f"{name}_shown"
    for name in (
        "exchange_id", "method", "path", "status", "duration_ms", "ttfb_ms", "input_tokens",
        "output_tokens", "session_id", "error", "events", "body",
    )
}
_BODY_PART = " body={body_shown}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
