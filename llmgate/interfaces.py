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

        ``exchange.attempts`` then lists every upstream attempt in order
        (:class:`llmgate.exchange.Attempt`: upstream name, ``host:port``,
        outcome, start and end times, status), so a middleware that wants a
        span per attempt builds them here, from their times.  At
        :meth:`response_started` the list is already final too: the last
        attempt is the one answering, ``exchange.upstream`` names it.
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


class IApiShape(Interface):
    """
    One LLM API as a client speaks it (OpenAI chat completions, OpenAI
    Responses, Anthropic messages...): how a call of it is recognised, and
    how its requests, answers, usage and errors are read and written.

    The gateway decides a call's shape from its path alone, before anything
    else, and reads the whole call by that shape whatever upstream answers
    it.  Built-in shapes live in ``llmgate/providers/``, one module each; a
    package adds one by shipping a Twisted plugin (a module in a
    ``twisted/plugins/`` directory) whose object provides this interface.
    Every method is pure and must never raise on any input: a surprising
    call or answer must not break the relay.
    """

    name = Attribute("A short unique name (``openai-chat``), for traces, logs and metrics.")
    system = Attribute(
        "The GenAI system it belongs to (``openai``, ``anthropic``): the family "
        "whose error shape it writes, and the ``gen_ai_system`` metric label."
    )
    priority = Attribute(
        "Shapes are asked in descending priority; the built-in ones use 0 to "
        "100, so a plugin can come before (more) or after them."
    )

    def recognises(path):
        """
        Whether a call to ``path`` (bytes, without the query) is of this shape.
        """

    def history(body):
        """
        The conversation a request carries, reduced for session detection.

        :param body: the request body parsed as JSON (any value).
        :return: a :class:`llmgate.sessions.canonical.History`, or None when
            the request carries no conversation.
        """

    def answer_from_body(document):
        """
        The assistant message of a plain JSON answer (parsed), in the shape a
        client sends back in its next history; None when it is not one.
        """

    def stream_answer():
        """
        A new reassembler of a streamed answer: an object with
        ``feed(event)`` (called for every :class:`llmgate.sse.ServerSentEvent`)
        and ``result()`` (the message as :meth:`answer_from_body` gives it,
        or None).
        """

    def stream_ended(event):
        """
        Whether ``event`` (a :class:`llmgate.sse.ServerSentEvent`) is one
        that only a complete stream carries (OpenAI's ``[DONE]``, Anthropic's
        ``message_stop``...): once it is relayed, a client that hangs up has
        the whole answer.  A shape that cannot tell says False.
        """

    def usage_from_body(document):
        """
        The :class:`llmgate.usage.Usage` of a plain JSON answer, or None.
        """

    def stream_usage():
        """
        A new reader of a stream's usage: ``feed(event)`` and ``result()``.
        """

    def error_body(status, message, code=None):
        """
        A JSON error body in this API's own shape (bytes), so a client's SDK
        raises its usual exception with the gateway's message.
        """

    def error_event(message, code=None):
        """
        One SSE event (bytes) that ends a broken stream visibly for this
        API's SDKs.
        """
