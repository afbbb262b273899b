"""
The upstream attempts of a call, as CLIENT spans see them: one per call
before failover, one per try with it.  Pure: plain values in, plain values
out.
"""

from __future__ import annotations

from typing import Any

import attrs

from llmgate.exchange import Exchange


@attrs.define
class Attempt:
    """
    One try of an upstream, as a CLIENT span sees it.  Times are the
    reactor clock's seconds.
    """

    started: float
    ended: float | None
    address: str
    port: int
    status: int | None = None
    error_kind: str | None = None
    upstream: str | None = None


def attempts_of(exchange: Exchange, address: str, port: int) -> list[Attempt]:
    """
    The upstream attempts of a finished call.

    With failover, the forwarder records each on ``exchange.attempts``
    (upstream name, ``host:port``, times, outcome, status); without, there
    is one, from the exchange's own times and ``address``/``port``.  The
    answering attempt lasts until the answer's end, its body included.
    """
    recorded = getattr(exchange, "attempts", None)
    if recorded:
        return [_from_record(exchange, attempt, port) for attempt in recorded]
    if exchange.sent_at is None:
        return []
    response = exchange.response
    return [
        Attempt(
            started=exchange.sent_at,
            ended=exchange.ended_at,
            address=address,
            port=port,
            status=response.status if response is not None else None,
            error_kind=exchange.error_kind if response is None else None,
        )
    ]


def _from_record(exchange: Exchange, record: Any, default_port: int) -> Attempt:
    host, _, port_text = record.address.rpartition(":")
    if not host or not port_text.isdigit():
        host, port_text = record.address, ""
    outcome = record.outcome
    ended = record.ended
    if outcome == "answered" and exchange.ended_at is not None:
        ended = exchange.ended_at
    if outcome in ("answered", "failover"):
        error_kind = None
    elif outcome == "pending":
        error_kind = exchange.error_kind
    else:
        error_kind = outcome
    return Attempt(
        started=record.started,
        ended=ended if ended is not None else exchange.ended_at,
        address=host.strip("[]"),
        port=int(port_text) if port_text else default_port,
        status=record.status,
        error_kind=error_kind,
        upstream=record.upstream,
    )
