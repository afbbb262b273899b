"""
Watching an answer go by: the bytes the relay has already written to the
client are decoded (when compressed), parsed as Server-Sent Events once, kept
up to a limit, and handed to the middleware.  Nothing here can change or
delay what the client receives.
"""

from __future__ import annotations

import zlib

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llmgate.exchange import Exchange, ResponseRecord
from llmgate.pipeline import Pipeline
from llmgate.sse import SSEError, SSEParser
from llmgate.providers.registry import shape_named
from llmgate.usage import usage_from_body


class Observer:
    """
    Fill an exchange's response record from the relayed body.

    :param capture_limit: bytes of body, or of event data, kept on the record;
        beyond it bytes are counted, not kept, so a long stream costs no memory.
    """

    log = Logger()

    def __init__(
        self,
        exchange: Exchange,
        record: ResponseRecord,
        pipeline: Pipeline,
        clock: IReactorTime,
        capture_limit: int,
    ) -> None:
        self._exchange = exchange
        self._record = record
        self._pipeline = pipeline
        self._clock = clock
        self._watching = pipeline.observed
        if not self._watching:
            # Nothing will read the record: count bytes and time only.
            self._room = 0
            self._decoder = None
            self._parser = None
            self._usage = None
            self._ended = None
            return
        self._room = capture_limit
        self._decoder = _decoder_for(record.header(b"content-encoding"))
        self._parser = SSEParser() if record.streaming else None
        shape = exchange.api if exchange.api is not None else shape_named(exchange.provider)
        self._usage = shape.stream_usage() if record.streaming else None
        # A plugin shape written before stream_ended existed has none.
        self._ended = getattr(shape, "stream_ended", None) if record.streaming else None

    def __call__(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange.first_byte_at is None:
            exchange.first_byte_at = self._clock.seconds()
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error:
                self._decoder = None
                self._parser = None
                self._record.truncated = True
                return
        record = self._record
        record.body_size += len(data)
        parser = self._parser
        if parser is None:
            if self._room > 0:
                kept = data[: self._room]
                record.body += kept
                self._room -= len(kept)
                if len(kept) < len(data):
                    record.truncated = True
            return
        try:
            events = parser.feed(data)
        except SSEError:
            self._parser = None
            record.truncated = True
            return
        usage = self._usage
        ended = self._ended
        for event in events:
            record.event_count += 1
            if usage is not None:
                usage.feed(event)
            if ended is not None and ended(event):
                exchange.stream_ended = True
                self._ended = ended = None
            if self._room > 0:
                record.events.append(event)
                self._room -= len(event.data) + len(event.event)
            else:
                record.truncated = True
            if self._pipeline.wants_events:
                self._pipeline.event_received(exchange, event)


    def finish(self) -> None:
        """
        The body ended: settle the exchange's token usage.
        """
        if not self._watching:
            return
        usage = None
        if self._usage is not None:
            usage = self._usage.result()
        else:
            document = self._record.document()
            if document is not None:
                exchange = self._exchange
                usage = usage_from_body(exchange.shape, document)
        if usage is not None:
            self._exchange.usage = usage.as_dict()


def _decoder_for(encoding: bytes | None) -> zlib._Decompress | None:
    """
    A decoder for the body's ``Content-Encoding``, for observation only; None
    when it is not encoded.
    """
    if not encoding:
        return None
    coding = encoding.strip().lower()
    if coding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == b"deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)
    return None
