"""
Every interface of llmgate, in one place.

A middleware is a provider of :class:`IMiddleware`; a package makes a new kind
of middleware available by shipping a Twisted plugin that provides
:class:`IMiddlewareFactory` (a module in a ``twisted/plugins/`` directory).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMiddleware(Interface):
    """
    Cross-cutting work on every exchange that passes the gateway.

    Hooks run on the reactor thread, in configuration order on the way in and
    in reverse order on the way out; each must return quickly and hand slow
    work (disk, network) elsewhere.  A hook that raises is logged and counted,
    and the call goes on as if the hook had not run.  Subclass
    :class:`llmgate.middleware.Middleware` to get no-op defaults; hooks a
    middleware does not override cost nothing per event.
    """

    name = Attribute("The configured type of this middleware, for logs and /config.")

    def request_received(exchange):
        """
        The client's request, before it is forwarded.  ``exchange.request``
        may be changed (headers, body).

        :return: None to go on, a :class:`llmgate.exchange.LocalAnswer` to
            answer the client without calling the upstream (and skip later
            middleware), or a Deferred firing with either.
        """

    def response_started(exchange):
        """
        The upstream's status and headers arrived; ``exchange.response`` holds
        them and may still be changed before the client sees them.
        """

    def event_received(exchange, event):
        """
        One Server-Sent Event of a streamed answer, already relayed to the
        client.  Called once per event with the one parsed copy every
        middleware shares (:class:`llmgate.sse.ServerSentEvent`).
        """

    def exchange_finished(exchange):
        """
        The exchange ended: answered, failed (``exchange.error`` says why), or
        abandoned by the client.  Timings, usage and the captured body or
        events are final.
        """

    def close():
        """
        The gateway is stopping: finish pending work (flush traces) and
        release resources.

        :return: None, or a Deferred that fires when done.
        """

    def state():
        """
        A small JSON-able mapping of live state for ``/config`` and the
        console (files written, say).  Never a secret.
        """


class IMiddlewareFactory(Interface):
    """
    A Twisted plugin that builds one type of middleware from its config.
    """

    name = Attribute("The ``type`` that names this middleware in the config.")

    def build(config, context):
        """
        Build the middleware.

        :param config: the ``config`` mapping of its entry in ``middlewares``.
        :param context: a :class:`llmgate.middleware.MiddlewareContext` with
            the reactor, the gateway's configuration and shared services.
        :raises llmgate.config.ConfigError: naming the bad field.
        :return: a provider of :class:`IMiddleware`.
        """


class ISessionStore(Interface):
    """
    Where session state lives: which conversation states (keys) belong to
    which session.  Methods may return their result or a Deferred of it, so
    a shared network store fits behind the same interface.
    """

    shared = Attribute(
        "Whether other processes read what this store writes (Redis): then an "
        "answer must not overtake the store's write at the end of its call."
    )

    def find(keys):
        """
        The first of ``keys`` (in order) that is known.

        :param keys: a sequence of bytes keys.
        :return: ``(index, session_id, is_latest)`` for the first known key,
            where ``is_latest`` says the key is its session's most recent
            state; or None.
        """

    def remember(session_id, keys, latest=True):
        """
        Record that ``keys`` now lead to ``session_id``; with ``latest``, as
        its most recent state.  A key already held by a live session keeps its first owner
        (claims are first-come), so concurrent identical conversations are
        never merged by a race.
        """

    def new_session():
        """
        Start a session.

        :return: its new id (str).
        """

    def forget(session_id, keys):
        """
        Release those of ``keys`` that ``session_id`` holds (a retry key once
        the retry got its answer); keys held by another session stay.
        """

    def touch(session_id):
        """
        Note a call in ``session_id`` (it stays alive for another TTL), and
        create it if the client named it itself.
        """

    def stats():
        """
        A mapping of counters for ``/metrics``: ``active_sessions``,
        ``sessions_created``, ``sessions_expired``, ``sessions_evicted``.
        """
