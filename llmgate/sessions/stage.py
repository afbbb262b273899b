"""
Session detection as the first stage of the pipeline: it labels each call
before any configured middleware sees it, and remembers the conversation's
new state when the answer is complete.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from llmgate.exchange import Exchange
from llmgate.middleware import Middleware
from llmgate.sessions.canonical import history_of
from llmgate.sessions.detect import Decision, Pending, SessionDetector

HEADER = b"x-llmgate-session-id"
#: Paths that count a conversation's tokens: they carry a history but are
#: never answered, so they only look sessions up.
_COUNTING = (b"/count_tokens", b"/input_tokens")
_VALID_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


class SessionStage(Middleware):
    """
    Label exchanges with their session.
    """

    name = "session"
    log = Logger()

    def __init__(self, detector: SessionDetector) -> None:
        self.detector = detector
        self.store_errors = 0
        self.client_headers = tuple(name.lower().encode("ascii") for name in detector.config.client_headers)
        # The names as Twisted's Headers stores them, so one pass over a
        # request's headers finds them (a lookup per name cost two Python
        # calls each, six names on every call).
        self._stored_names = {
            _stored_name(name): name for name in self.client_headers
        }

    def client_session(self, headers: Any) -> str | None:
        """
        The session a client names in the first of ``session.client_headers``
        it sends with a well-formed value.  The value is only a label: it is
        namespaced by the header's name (``x-claude-code-session-id:<id>``),
        so two tools that happen to pick one id never share a session; the
        gateway's own ``x-llmgate-session-id`` is taken as is.
        """
        stored = self._stored_names
        sent = {
            stored[name]: values
            for name, values in headers.getAllRawHeaders()
            if name in stored
        }
        if not sent:
            return None
        for name in self.client_headers:
            given = sent.get(name)
            if not given:
                continue
            value = given[-1].strip()
            if not _VALID_ID.fullmatch(value):
                continue
            label = value.decode("ascii")
            return label if name == HEADER else f"{name.decode('ascii')}:{label}"
        return None

    def request_received(self, exchange: Exchange) -> Any:
        named = self.client_session(exchange.request.headers)
        # The call's shape itself: a plugin's shape is in no registry here.
        shape = exchange.shape
        history = history_of(shape, exchange.request.path, exchange.request_json)
        if history is None:
            if named:
                exchange.session_id = named
            return None
        counting = exchange.request.path.endswith(_COUNTING)
        pending, decided = self.detector.begin(history, named, create=not counting)
        exchange.notes["session"] = pending
        if isinstance(decided, Deferred):
            return decided.addCallbacks(
                self._label, self._store_failed, callbackArgs=(exchange,), errbackArgs=(exchange,)
            )
        self._label(decided, exchange)
        return None

    def _label(self, decision: Decision, exchange: Exchange) -> None:
        exchange.session_id = decision.session_id or None
        exchange.notes["session_how"] = decision.how

    def _store_failed(self, failure: Any, exchange: Exchange) -> None:
        self.store_errors += 1
        self.log.failure("session store failed; call goes on unlabelled", failure)
        exchange.notes.pop("session", None)

    def exchange_finished(self, exchange: Exchange) -> None:
        pending: Pending | None = exchange.notes.get("session")
        if pending is None or not pending.decision.session_id:
            return
        answer = exchange.answer
        response_id = _response_id(exchange) if answer is not None else None
        done = self.detector.complete(pending, answer, response_id)
        if isinstance(done, Deferred):
            done.addErrback(self._remember_failed)

    def _remember_failed(self, failure: Any) -> None:
        self.store_errors += 1
        self.log.failure("session store failed to remember a state", failure)

    def close(self) -> Any:
        close = getattr(self.detector.store, "close", None)
        return close() if close is not None else None

    def state(self) -> Mapping[str, Any]:
        stats = dict(self.detector.store.stats()) if hasattr(self.detector.store, "stats") else {}
        return {**stats, **self.counts()}

    def counts(self) -> dict[str, int]:
        counts = self.detector.counts
        return {
            "cache_hits": counts["cache_hits"],
            "cache_misses": counts["cache_misses"],
            "fuzzy_matches": counts["fuzzy_matches"],
            "store_errors": self.store_errors,
        }


def _stored_name(name: bytes) -> bytes:
    """
    ``name`` as ``Headers.getAllRawHeaders`` gives it back.
    """
    headers = Headers()
    headers.addRawHeader(name, b"")
    return next(iter(headers.getAllRawHeaders()))[0]


def _response_id(exchange: Exchange) -> str | None:
    """
    The id of an OpenAI Responses API answer, which a later call may name as
    its ``previous_response_id``: from the parsed answer, or from the first
    events of a stream (``response.created`` carries it).
    """
    response = exchange.response
    if response is None:
        return None
    if not response.streaming:
        document = response.document()
        if isinstance(document, dict) and document.get("object") == "response":
            value = document.get("id")
            return value if isinstance(value, str) else None
        return None
    for event in response.events[:3]:
        if '"resp_' not in event.data:
            continue
        try:
            document = event.json()
        except ValueError:
            continue
        inner = document.get("response") if isinstance(document, dict) else None
        if isinstance(inner, dict) and isinstance(inner.get("id"), str):
            return inner["id"]
    return None
