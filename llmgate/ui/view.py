"""
The live view's HTTP side: the two pages and their static files under
``/ui/``, and the JSON API under ``/api/`` (documented in docs/ui.md).

The pages hold no data: everything comes from the API, which is an admin
endpoint (the gateway checks the admin token before :meth:`LiveView.api`).
Pages are served with a Content-Security-Policy that allows no inline script
and no other origin, and the script puts every text from a trace into the
page as text, never as HTML.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from urllib.parse import unquote

from twisted.internet.defer import Deferred, succeed

from llmgate.middleware.live import Hub, LiveFeed
from llmgate.ui.events import EventStream
from llmgate.ui.index import TraceIndex

#: Paths the gateway answers itself for the view; everything else under
#: ``/api/`` is relayed (an upstream may have its own ``/api/``).
API_PREFIXES = (b"/api/sessions", b"/api/calls/", b"/api/events", b"/api/stats")
PAGE_PREFIXES = (b"/ui/",)

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def is_view_path(path: bytes) -> bool:
    return path == b"/ui" or path.startswith(PAGE_PREFIXES) or path.startswith(API_PREFIXES)


def _asset(name: str) -> bytes:
    return resources.files("llmgate.ui").joinpath("static", name).read_bytes()


def _json(request: Any, document: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _arg(request: Any, name: bytes, default: str = "") -> str:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else default


def _int_arg(request: Any, name: bytes, default: int, high: int) -> int:
    try:
        return max(0, min(int(_arg(request, name, str(default))), high))
    except ValueError:
        return default


class LiveView:
    """
    :param index: the trace index.
    :param live: this process's live feed (calls in flight).
    :param clock: for wall time (``seconds()``).
    """

    def __init__(self, index: TraceIndex, live: LiveFeed, hub: Hub, reactor: Any) -> None:
        self.index = index
        self.live = live
        self.hub = hub
        self.reactor = reactor
        self.streams: list[EventStream] = []
        self.pages = {
            "index": _asset("index.html"),
            "session": _asset("session.html"),
        }
        self.assets = {name: _asset(name) for name in STATIC}

    claims = staticmethod(is_view_path)

    # -- pages ----------------------------------------------------------------

    def page(self, request: Any) -> bytes:
        path = request.path
        if path in (b"/ui", b"/ui/"):
            return self._page(request, self.pages["index"])
        if path.startswith(b"/ui/sessions/") and len(path) > len(b"/ui/sessions/"):
            return self._page(request, self.pages["session"])
        if path.startswith(b"/ui/static/"):
            name = path[len(b"/ui/static/") :].decode("ascii", "replace")
            if name in self.assets:
                request.setHeader(b"content-type", STATIC[name].encode("ascii"))
                request.setHeader(b"cache-control", b"no-cache")
                request.setHeader(b"x-content-type-options", b"nosniff")
                return self.assets[name]
        return _json(request, {"error": "no such page"}, 404)

    @staticmethod
    def _page(request: Any, body: bytes) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-cache")
        return body

    # -- the API --------------------------------------------------------------

    def api(self, request: Any) -> Any:
        path = request.path
        if path == b"/api/sessions":
            return self.sessions(request)
        if path.startswith(b"/api/sessions/"):
            return self.session(request, _tail(path, b"/api/sessions/"))
        if path.startswith(b"/api/calls/"):
            return self.call(request, _tail(path, b"/api/calls/"))
        if path == b"/api/events":
            return self.events(request)
        if path == b"/api/stats":
            return _json(request, self.stats())
        return _json(request, {"error": "no such endpoint"}, 404)

    def sessions(self, request: Any) -> bytes:
        limit = _int_arg(request, b"limit", 50, 500)
        offset = _int_arg(request, b"offset", 0, 10**9)
        total, found = self.index.find_sessions(
            text=_arg(request, b"q"), model=_arg(request, b"model"), offset=offset, limit=limit
        )
        return _json(
            request,
            {
                "sessions": [s.as_json() for s in found],
                "total": total,
                "offset": offset,
                "limit": limit,
                "ready": self.index.ready,
                "in_flight": self._in_flight(None),
            },
        )

    def session(self, request: Any, session_id: str) -> Any:
        limit = _int_arg(request, b"limit", 200, 1000)
        offset = _int_arg(request, b"offset", 0, 10**9)
        summary = self.index.sessions.get(session_id)
        in_flight = self._in_flight(session_id)
        calls = self.index.session_calls(session_id, offset, limit)
        if calls is None:
            if not in_flight:
                return _json(request, {"error": "no such session", "ready": self.index.ready}, 404)
            calls = succeed([])

        def answer(found: list[dict[str, Any]]) -> bytes:
            return _json(
                request,
                {
                    "session": summary.as_json() if summary else {"id": session_id, "calls": 0},
                    "calls": found,
                    "offset": offset,
                    "limit": limit,
                    "in_flight": in_flight,
                },
            )

        return calls.addCallback(answer)

    def call(self, request: Any, call_id: str) -> Any:
        entry = self.live.live.get(call_id)
        if entry is not None:
            return _json(request, {"call": entry.call, "text": entry.text, "in_progress": True})
        summary = self.index.calls.get(call_id)
        read = self.index.read_call(call_id)
        if summary is None or read is None:
            return _json(request, {"error": "no such call"}, 404)
        return read.addCallback(
            lambda document: _json(
                request, {"call": summary.as_json(), "trace": document, "in_progress": False}
            )
        )

    def events(self, request: Any) -> Deferred[bytes]:
        session = _arg(request, b"session") or None
        stream = EventStream(
            request,
            self.hub,
            self.reactor,
            session=session,
            deltas=_arg(request, b"deltas") in ("1", "true"),
            on_close=self.streams.remove,
        )
        self.streams.append(stream)
        return stream.done

    def stats(self) -> dict[str, Any]:
        document = self.index.stats.last_hour(self.reactor.seconds())
        document["index"] = self.index.state()
        document["in_flight"] = len(self.live.live)
        document["followers"] = len(self.streams)
        return document

    def _in_flight(self, session_id: str | None) -> list[dict[str, Any]]:
        return [
            {**entry.call, "text": entry.text}
            for entry in list(self.live.live.values())
            if session_id is None or entry.session_id == session_id
        ]

    def close(self) -> None:
        for stream in list(self.streams):
            stream.close()


class DisabledView:
    """
    What ``/ui/`` says when the view is off: one line, and why.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @staticmethod
    def claims(path: bytes) -> bool:
        """
        Only the page: ``/api/`` paths go upstream as they did before.
        """
        return path == b"/ui" or path.startswith(PAGE_PREFIXES)

    def page(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.reason.encode("utf-8") + b"\n"

    def api(self, request: Any) -> bytes:
        return _json(request, {"error": self.reason}, 404)

    def close(self) -> None:
        pass


def _tail(path: bytes, prefix: bytes) -> str:
    return unquote(path[len(prefix) :].decode("utf-8", "replace"))
