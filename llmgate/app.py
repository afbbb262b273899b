"""
The HTTP face of the gateway: a Klein app with the gateway's own endpoints
and a catch-all route that hands every other call to the forwarder.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from typing import Any, Callable

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException

from llmgate import __version__
from llmgate.auth import AdminGuard
from llmgate.forward import Forwarder
from llmgate.metrics import Metrics, wants_prometheus
from llmgate.http.server import GatewayRequest
from llmgate.limits import RefusalReport

#: The gateway's own endpoints; every other path is relayed upstream.
OWN_PATHS = frozenset({b"/health", b"/config", b"/metrics"})

#: Methods a client may relay; the provider APIs use no other.
PROXY_METHODS = (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS")

#: An origin-form target the upstream client can send: printable ASCII only.
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*\Z")


def _json(request: Request, document: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document).encode("utf-8")


def admin_only(route: Callable[..., Any]) -> Callable[..., Any]:
    """
    Guard a :class:`Gateway` route as part of the admin surface: the
    request passes :class:`~llmgate.auth.AdminGuard`'s check or gets its
    refusal.  Every admin view (``/config``, ``/metrics``, a UI, an API)
    takes this one check; put it under ``@app.route``.
    """

    @functools.wraps(route)
    def guarded(self: Gateway, request: Request, *args: Any, **kwargs: Any) -> Any:
        refused = self._admin_refusal(request)
        if refused is not None:
            return refused
        return route(self, request, *args, **kwargs)

    return guarded


class Gateway:
    """
    The gateway's resource tree.

    :param forwarder: relays proxied calls upstream.
    :param config_view: returns ``/config``'s document (secrets redacted).
    :param metrics_view: returns ``/metrics``' JSON document.
    :param metrics: the Prometheus exposition source, if any.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self,
        forwarder: Forwarder,
        config_view: Callable[[], Any],
        metrics_view: Callable[[], Any],
        metrics: Metrics | None = None,
        ui: Any = None,
    ) -> None:
        self.forwarder = forwarder
        self.metrics = metrics
        config = forwarder.config
        self.max_concurrent = config.server.max_concurrent
        self.admin = AdminGuard.from_config(config.auth)
        if self.admin.describe():
            self.log.info("{admin}", admin=self.admin.describe())
        self.overload = RefusalReport(forwarder.clock, self.max_concurrent)
        #: Calls refused here, by reason, for /metrics.
        self.refused: Counter[str] = Counter()
        self._config_view = config_view
        self._metrics_view = metrics_view
        #: The live view (llmgate.ui.view), or None.
        self.ui = ui

    def resource(self) -> Any:
        return GatewayRoot(self, self.app.resource())

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: Request) -> bytes:
        return _json(
            request, {"status": "healthy", "service": "llmgate", "version": __version__}
        )

    @app.route("/config", methods=["GET", "HEAD"])
    @admin_only
    def config(self, request: Request) -> bytes:
        return _json(request, self._config_view())

    @app.route("/metrics", methods=["GET", "HEAD"])
    @admin_only
    def metrics(self, request: Request) -> bytes:
        metrics = self.metrics
        if metrics is None:
            return self._error(request, 404, "metrics are disabled", "metrics_disabled")
        fmt = (request.args.get(b"format") or [None])[0]
        accept = request.getHeader(b"accept")
        if wants_prometheus(fmt, accept):
            body, content_type = metrics.prometheus(accept.decode("latin-1") if accept else None)
            request.setHeader(b"content-type", content_type.encode("ascii"))
            request.setHeader(b"cache-control", b"no-store")
            return body
        return _json(request, self._metrics_view())

    # The live view: pages open (they hold no data), the API an admin endpoint.
    @app.route("/ui/", branch=True, methods=["GET", "HEAD"])
    def ui_page(self, request: Request) -> Any:
        return self.ui.page(request)

    @app.route("/api/", branch=True, methods=["GET", "HEAD"])
    @admin_only
    def ui_api(self, request: Request) -> Any:
        return self.ui.api(request)

    def proxy(self, request: Request) -> Any:
        """
        A proxied call: refused here (bytes of a JSON error), or handed to
        the forwarder (a Deferred that fires when the answer is complete).
        """
        if not _ORIGIN_FORM.match(request.uri):
            self.refused["bad_request"] += 1
            return self._error(request, 400, "request target must be a path", "bad_request")
        if request.method not in PROXY_METHODS:
            self.refused["method_not_allowed"] += 1
            request.setHeader(b"allow", b", ".join(PROXY_METHODS))
            return self._error(request, 405, "method not allowed", "method_not_allowed")
        if self.max_concurrent and len(self.forwarder.open_calls) >= self.max_concurrent:
            self.refused["overloaded"] += 1
            self.overload.refused()
            request.setHeader(b"retry-after", b"1")
            return self._error(request, 503, "gateway at its concurrency limit", "overloaded")
        return self.forwarder.forward(request)

    def _admin_refusal(self, request: Request) -> bytes | None:
        """
        The answer refusing an admin view to this request, or None when it
        may see it (see :class:`~llmgate.auth.AdminGuard`).
        """
        refusal = self.admin.refusal(request.requestHeaders, request.getClientAddress())
        if refusal is None:
            return None
        if refusal.status == 401:
            self.refused["unauthorized_admin"] += 1
            request.setHeader(b"www-authenticate", b"Bearer")
        else:
            self.refused["forbidden_admin"] += 1
        return self._error(request, refusal.status, refusal.message, refusal.kind)

    @app.handle_errors(HTTPException)
    def http_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        return self._error(request, error.code, error.name.lower(), "gateway_route")

    @app.handle_errors(Exception)
    def unexpected_error(self, request: Request, failure: Failure) -> bytes:
        self.log.failure("unexpected error answering {uri}", failure, uri=request.uri)
        return self._error(request, 500, "internal gateway error", "gateway_error")

    def _error(self, request: Request, status: int, message: str, kind: str) -> bytes:
        return self.forwarder.error_answer(request, status, message, kind)


class GatewayRoot(Resource):
    """
    The root of the resource tree.  The gateway's own endpoints are the
    Klein app's; every other path is a proxied call, given to the forwarder
    directly: Klein's routing of a catch-all path cost more per call than
    the rest of the relay, and a proxied call needs none of it.

    Like Klein, it finishes the request when the call's Deferred fires and
    cancels that Deferred when the client goes away.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, gateway: Gateway, own: Any) -> None:
        super().__init__()
        self.gateway = gateway
        self.own = own

    def render(self, request: Request) -> Any:
        if request.path in OWN_PATHS or (
            self.gateway.ui is not None and self.gateway.ui.claims(request.path)
        ):
            return self.own.render(request)
        result = self.gateway.proxy(request)
        if isinstance(result, bytes):
            return result
        if isinstance(request, GatewayRequest):
            request.when_client_gone(result.cancel)
        else:
            request.notifyFinish().addErrback(lambda _: result.cancel())
        result.addCallbacks(self._done, self._failed, (request,), None, (request,))
        return NOT_DONE_YET

    @staticmethod
    def _done(_: Any, request: Request) -> None:
        if not request.finished and not request._disconnected:
            request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError) or request._disconnected:
            return
        self.log.failure("unexpected error relaying {uri}", failure, uri=request.uri)
        if request.startedWriting:
            request.channel.transport.abortConnection()
            return
        body = self.gateway._error(request, 500, "internal gateway error", "gateway_error")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

