"""
The trace middleware: every exchange saved as one JSON file.

The reactor thread takes a snapshot of the finished exchange and, on a
later turn of the loop, in slices of at most :data:`RENDER_SLICE` seconds,
builds its document and serialises it with ``orjson``; a single writer
thread only makes system calls: it writes a temporary file and renames it
into place.  A writer thread that built and serialised documents itself
held the GIL for hundreds of microseconds at a time, and the reactor thread
waited for it (CPython hands the GIL over only every
``sys.getswitchinterval()``, 5 ms): one call in a hundred waited 10 to 30 ms.
Under overload traces are dropped and counted, never queued without bound.
"""

from __future__ import annotations

import errno
import os
from time import perf_counter
import tempfile
import time
from collections import deque
from typing import Any, Mapping

import queue
import threading

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from llmgate import fastjson
from llmgate.answer import StreamAnswer, answer_from_body
from llmgate.config import ConfigError, Section
from llmgate.exchange import UNPARSED, Exchange
from llmgate.middleware import Middleware, MiddlewareContext
from llmgate.redact import REDACTED, Scrubber, redact_headers
from llmgate.sse import ServerSentEvent

SUFFIX = ".json"

_STOP = object()

#: How long rendered traces gather on the reactor thread before the writer
#: thread is woken for them, so that it wakes once per batch rather than
#: once per exchange.
GATHER_SECONDS = 0.02

#: The most time one turn of the reactor spends rendering traces; what is
#: left waits for the next turn, so a burst of calls ending together never
#: holds up the calls still in flight for longer than this.
RENDER_SLICE = 0.002

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
#: A file with no name, in the directory's file system (Linux 3.11+).
_UNNAMED = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | getattr(os, "O_CLOEXEC", 0)
#: What says unnamed files are not to be had here (the file system has no
#: O_TMPFILE; no /proc to link from): the named way, from then on.
_NO_UNNAMED_OPEN = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
_NO_UNNAMED_LINK = frozenset({errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL})


def build(config: Mapping[str, Any], context: MiddlewareContext) -> "TraceMiddleware":
    section = Section(dict(config), "")
    section.allow(
        {
            "directory", "include_headers", "include_body", "max_body_size",
            "max_files", "max_age_seconds", "max_queue",
        }
    )
    directory = section.string("directory", "./traces")
    max_files = section.get("max_files", None)
    max_age = section.get("max_age_seconds", None)
    middleware = TraceMiddleware(
        reactor=context.reactor,
        directory=directory,
        include_headers=section.boolean("include_headers", True),
        include_body=section.boolean("include_body", True),
        max_body_size=section.integer("max_body_size", 1024 * 1024, 0, 2**31),
        max_files=None if max_files is None else section.integer("max_files", 0, 1, 10**9),
        max_age_seconds=None
        if max_age is None
        else section.number("max_age_seconds", 0, 1, 10**10),
        max_queue=section.integer("max_queue", 1000, 1, 10**6),
        scrubber=Scrubber([context.config.llm.api_key]),
        extra_secret_headers=frozenset(
            [context.config.llm.auth_header] if context.config.llm.auth_header else []
        ),
    )
    return middleware


def check_directory(directory: str) -> None:
    """
    Make sure traces can be written there, at start-up.

    :raises ConfigError: naming the directory and why not.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".llmgate-probe-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(
            f"directory: trace directory {directory!r} is not writable "
            f"({error.strerror or error})"
        ) from None


class TraceMiddleware(Middleware):
    """
    Write one JSON file per exchange.

    :ivar written: files written.
    :ivar failed: writes that failed (disk full, directory gone...).
    :ivar dropped: traces dropped because the queue was full.
    """

    name = "trace"
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        directory: str,
        include_headers: bool = True,
        include_body: bool = True,
        max_body_size: int = 1024 * 1024,
        max_files: int | None = None,
        max_age_seconds: float | None = None,
        max_queue: int = 1000,
        scrubber: Scrubber | None = None,
        extra_secret_headers: frozenset[str] = frozenset(),
    ) -> None:
        check_directory(directory)
        self.reactor = reactor
        self.directory = os.path.abspath(directory)
        self.include_headers = include_headers
        self.include_body = include_body
        self.max_body_size = max_body_size
        self.max_files = max_files
        self.max_age_seconds = max_age_seconds
        self.max_queue = max_queue
        self.scrub = scrubber or Scrubber()
        self.extra_secret_headers = extra_secret_headers
        self.written = 0
        self.failed = 0
        self.dropped = 0
        #: Files written unnamed, then linked (see :meth:`_store_unnamed`).
        self.unnamed_files = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._directory: tuple[int, int] = (-1, -1)
        self.pending = 0
        self._idle: list[Deferred[None]] = []
        self._files: deque[str] = deque(self._existing_files())
        # One writer thread, started on first use, fed a batch of rendered
        # traces at most every GATHER_SECONDS; ``pending`` bounds what waits
        # to be rendered or written; it reports back once per batch, so a
        # busy gateway is not woken once per trace.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._to_render: deque[dict[str, Any]] = deque()
        self._render_call: Any = None
        self._ready: list[tuple[str, bytes, float]] = []
        self._handoff: Any = None
        self._stamp: tuple[int, str, str] = (-1, "", "")

    # -- the middleware ---------------------------------------------------------

    def exchange_finished(self, exchange: Exchange) -> None:
        if self.pending >= self.max_queue:
            self.dropped += 1
            return
        self.pending += 1
        self._to_render.append(self._snapshot(exchange))
        if self._render_call is None:
            # After the answer's last bytes are out, not before.
            self._render_call = self.reactor.callLater(0, self._render_some)

    def state(self) -> Mapping[str, Any]:
        return {
            "directory": self.directory,
            "files_written": self.written,
            "write_failures": self.failed,
            "dropped": self.dropped,
            "queued": self.pending,
        }

    def close(self) -> Deferred[None]:
        """
        Render and write what is queued, then stop the writer thread.
        """
        self._cancel_timers()
        while self._to_render:
            self._render_some()
            self._cancel_timers()
        self._hand_over()
        return self.flush().addCallback(lambda _: self._stop_pool())

    def _cancel_timers(self) -> None:
        for call in (self._render_call, self._handoff):
            if call is not None and call.active():
                call.cancel()
        self._render_call = self._handoff = None

    def _stop_pool(self) -> None:
        self._cancel_timers()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread = None

    def flush(self) -> Deferred[None]:
        """
        A Deferred that fires when every queued trace is on disk (or failed).
        """
        if self.pending == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    # -- reactor thread: cheap ------------------------------------------------

    def _snapshot(self, exchange: Exchange) -> dict[str, Any]:
        """
        The exchange's final values, copied at its end so that rendering on a
        later turn of the loop sees them as they were.
        """
        response = exchange.response
        return {
            "id": exchange.id,
            "wall_time": time.time(),
            "provider": exchange.system,
            "api": exchange.provider,
            "shape": exchange.shape,
            "upstream": exchange.upstream,
            "attempts": [attempt.as_dict() for attempt in exchange.attempts],
            "method": exchange.request.method,
            "path": exchange.request.path,
            "query": exchange.request.query,
            "request_headers": list(exchange.request.headers.getAllRawHeaders()),
            "request_body": exchange.request.body,
            "request_document": exchange.parsed_request_json(),
            "status": response.status if response else None,
            "response_headers": list(response.headers) if response else [],
            "streaming": response.streaming if response else False,
            "response_body": bytes(response.body) if response else b"",
            "body_size": response.body_size if response else 0,
            "events": list(response.events) if response else [],
            "event_count": response.event_count if response else 0,
            "truncated": response.truncated if response else False,
            "session_id": exchange.session_id,
            "session_decision": exchange.notes.get("session_how"),
            "model": exchange.model,
            "usage": exchange.usage,
            # Parsed already by another stage, or parsed when rendered.
            "document": response.parsed_document() if response else UNPARSED,
            "answer": exchange.built_answer(),
            "duration": exchange.duration,
            "ttfb": exchange.ttfb,
            "error": exchange.error,
            "error_kind": exchange.error_kind,
            "client_gone": exchange.client_gone,
            "closed_after_end": exchange.closed_after_end,
        }

    def _render_some(self) -> None:
        """
        Render queued snapshots for up to :data:`RENDER_SLICE` seconds and
        hand the bytes to the writer thread.
        """
        self._render_call = None
        deadline = perf_counter() + RENDER_SLICE
        batch: list[tuple[str, bytes, float]] = []
        failures: list[str] = []
        while self._to_render:
            snapshot = self._to_render.popleft()
            try:
                batch.append(self._render(snapshot))
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")
            if perf_counter() > deadline:
                break
        if self._to_render:
            self._render_call = self.reactor.callLater(0, self._render_some)
        self._ready.extend(batch)
        if self._ready and self._handoff is None:
            self._handoff = self.reactor.callLater(GATHER_SECONDS, self._hand_over)
        if failures:
            self._settled(0, failures)

    def _hand_over(self) -> None:
        """
        Give the writer thread what was rendered in the last
        :data:`GATHER_SECONDS`: one wake-up of it per batch, never one per
        trace (each cost a thread switch and two hand-overs of the GIL).
        """
        self._handoff = None
        batch, self._ready = self._ready, []
        if not batch:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._writer, name="llmgate-trace", daemon=True
            )
            self._thread.start()
        self._queue.put(batch)

    def _render(self, snap: dict[str, Any]) -> tuple[str, bytes, float]:
        """
        A trace file's name and bytes: the document, serialised, scrubbed.
        """
        data = self.scrub.bytes(fastjson.dumps(self._document(snap)))
        wall_time = snap["wall_time"]
        stamp = self._stamps(wall_time)[0]
        micros = int((wall_time % 1) * 1_000_000)
        return f"{stamp}.{micros:06d}Z-{snap['id']}{SUFFIX}", data, wall_time

    def _stamps(self, wall_time: float) -> tuple[str, str]:
        """
        The second of ``wall_time`` as a file name's stamp and as a
        document's timestamp, formatted once per second, not twice a call.
        """
        second = int(wall_time)
        cached = self._stamp
        if cached[0] != second:
            when = time.gmtime(second)
            # One tuple, assigned at once: a reader never sees half of it.
            cached = self._stamp = (
                second,
                time.strftime("%Y%m%dT%H%M%S", when),
                time.strftime("%Y-%m-%dT%H:%M:%S", when),
            )
        return cached[1], cached[2]

    def _settled(self, written: int, failures: list[str]) -> None:
        self.written += written
        self.failed += len(failures)
        for error in failures[:3]:
            self.log.error(
                "trace write failed in {directory}: {error}",
                directory=self.directory,
                error=error,
            )
        if len(failures) > 3:
            self.log.error("{more} more trace writes failed", more=len(failures) - 3)
        self.pending -= written + len(failures)
        if self.pending == 0:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    # -- writer thread --------------------------------------------------------

    def _writer(self) -> None:
        """
        Write rendered traces; after each batch (everything queued
        meanwhile), report to the reactor once.  Only system calls here:
        they release the GIL, so the reactor thread never waits for this one.
        """
        get = self._queue.get
        while True:
            batch = get()
            written, failures = 0, []
            while True:
                if batch is _STOP:
                    self._close_directory()
                    if written or failures:
                        self.reactor.callFromThread(self._settled, written, failures)
                    return
                for rendered in batch:
                    try:
                        self._store(rendered)
                        written += 1
                    except Exception as error:
                        failures.append(f"{type(error).__name__}: {error}")
                try:
                    batch = self._queue.get_nowait()
                except queue.Empty:
                    break
            self.reactor.callFromThread(self._settled, written, failures)

    def _write(self, snap: dict[str, Any]) -> str:
        """
        Render and store one snapshot at once (tests, tools).
        """
        return self._store(self._render(snap))

    def _store(self, rendered: tuple[str, bytes, float]) -> str:
        name, data, wall_time = rendered
        path = os.path.join(self.directory, name)
        if not (self.unnamed_files and self._store_unnamed(path, data)):
            self._store_named(name, path, data)
        self._files.append(path)
        self._retire(wall_time)
        return path

    def _store_unnamed(self, path: str, data: bytes) -> bool:
        """
        Write ``data`` to a file with no name yet (``O_TMPFILE``), then give
        it its name (``linkat``): it appears whole, as with a rename, at one
        directory operation instead of two (creating a file costs 30 us to
        over 1 ms of kernel time here, on the gateway's core).

        :return: False, and never again tried, where the file system or the
            platform cannot (no ``O_TMPFILE``, no ``/proc``).
        """
        try:
            handle = os.open(self.directory, _UNNAMED, 0o644)
        except OSError as error:
            if error.errno in _NO_UNNAMED_OPEN:
                self.unnamed_files = False
                return False
            raise
        try:
            _write_all(handle, data)
            try:
                # The name ends with the exchange id, unique: an existing
                # file is an error (EEXIST), never overwritten.
                # A directory descriptor makes os.link call linkat with
                # AT_SYMLINK_FOLLOW (plain link() gives EXDEV here).
                os.link(
                    f"/proc/self/fd/{handle}",
                    os.path.basename(path),
                    dst_dir_fd=self._directory_handle(),
                    follow_symlinks=True,
                )
            except OSError as error:
                if error.errno not in _NO_UNNAMED_LINK:
                    raise
                self.unnamed_files = False
                return False
        finally:
            os.close(handle)
        return True

    def _directory_handle(self) -> int:
        """
        A descriptor of the trace directory, opened once per process.
        """
        pid, handle = self._directory
        if pid != os.getpid():
            handle = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._directory = (os.getpid(), handle)
        return handle

    def _close_directory(self) -> None:
        pid, handle = self._directory
        self._directory = (-1, -1)
        if pid == os.getpid():
            os.close(handle)

    def _store_named(self, name: str, path: str, data: bytes) -> None:
        # The name ends with the exchange id, unique; O_EXCL makes sure.
        temporary = os.path.join(self.directory, "." + name + ".tmp")
        handle = os.open(temporary, _CREATE, 0o644)
        try:
            try:
                _write_all(handle, data)
            finally:
                os.close(handle)
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise

    def _document(self, snap: dict[str, Any]) -> dict[str, Any]:
        shape = snap["shape"]
        request: dict[str, Any] = {
            "method": snap["method"].decode("ascii", "replace"),
            "path": snap["path"].decode("utf-8", "replace"),
            "query": snap["query"].decode("utf-8", "replace"),
        }
        response: dict[str, Any] | None = None
        if snap["status"] is not None:
            response = {"status": snap["status"]}
        if self.include_headers:
            request["headers"] = redact_headers(snap["request_headers"], self.extra_secret_headers)
            if response is not None:
                response["headers"] = redact_headers(
                    snap["response_headers"], self.extra_secret_headers
                )
        if self.include_body:
            request.update(
                self._body(
                    "body", snap["request_body"], len(snap["request_body"]),
                    snap["request_document"],
                )
            )
            if response is not None:
                if snap["streaming"]:
                    response.update(self._events(snap))
                    if isinstance(snap["answer"], dict):
                        # Reassembled already (the session stage asks for it).
                        response["message"] = snap["answer"]
                    else:
                        # A failed or cut stream: what came of the message.
                        assembler = StreamAnswer(shape)
                        for event in snap["events"]:
                            assembler.feed(event)
                        response["message"] = assembler.result()
                else:
                    body = self._body(
                        "body", snap["response_body"], snap["body_size"], snap["document"]
                    )
                    response.update(body)
                    if snap["answer"] is not UNPARSED:
                        response["message"] = snap["answer"]
                    elif "body_truncated" not in body:
                        response["message"] = answer_from_body(shape, body["body"])
                    else:
                        response["message"] = None
        document: dict[str, Any] = {
            "id": snap["id"],
            "timestamp": self._stamps(snap["wall_time"])[1]
            + f".{int((snap['wall_time'] % 1) * 1000):03d}Z",
            "provider": snap["provider"],
            "api": snap["api"],
            "upstream": snap["upstream"],
            "attempts": snap["attempts"],
            "model": snap["model"],
            "session_id": snap["session_id"],
            "session_decision": snap["session_decision"],
            "request": request,
            "response": response,
            "usage": snap["usage"],
            "duration_ms": _ms(snap["duration"]),
            "ttfb_ms": _ms(snap["ttfb"]),
        }
        if snap["error"] is not None:
            document["error"] = {"kind": snap["error_kind"], "message": snap["error"]}
        elif snap.get("closed_after_end"):
            # Complete: the client hung up after the stream's end event.
            document["note"] = "client closed after the end of the stream"
        return document

    def _body(self, key: str, body: bytes, size: int, parsed: Any = None) -> dict[str, Any]:
        """
        A body as JSON where it is JSON, as text otherwise; cut at
        ``max_body_size`` with a marker saying how much there was.
        """
        limit = self.max_body_size
        if len(body) > limit or size > len(body):
            # Scrubbed before it is cut, never after.
            text = self.scrub.cut(
                body[: limit + self.scrub.longest * 4].decode("utf-8", "replace"), limit
            )
            return {
                key: text,
                f"{key}_truncated": {"size": max(size, len(body)), "kept": min(limit, len(body))},
            }
        if parsed is not UNPARSED and parsed is not None:
            return {key: parsed}
        try:
            return {key: fastjson.loads(body)} if body else {key: None}
        except (ValueError, RecursionError):
            return {key: body.decode("utf-8", "replace")}

    def _events(self, snap: dict[str, Any]) -> dict[str, Any]:
        kept = []
        room = self.max_body_size
        for event in snap["events"]:
            room -= len(event.data)
            if room < 0:
                break
            kept.append({"event": event.event, "data": _maybe_json(event)})
        result: dict[str, Any] = {"events": kept}
        if len(kept) < snap["event_count"] or snap["truncated"]:
            result["events_truncated"] = {"count": snap["event_count"], "kept": len(kept)}
        return result

    def _existing_files(self) -> list[str]:
        """
        Trace files already present, oldest first: read once at start, so
        retention never scans the directory on a request.
        """
        if self.max_files is None and self.max_age_seconds is None:
            return []
        names = sorted(
            name
            for name in os.listdir(self.directory)
            if name.endswith(SUFFIX) and not name.startswith(".")
        )
        return [os.path.join(self.directory, name) for name in names]

    def _retire(self, now: float) -> None:
        """
        Remove the oldest traces beyond ``max_files`` or ``max_age_seconds``.
        File names begin with their UTC time, so age needs no stat call.
        """
        files = self._files
        if self.max_files is None and self.max_age_seconds is None:
            files.clear()
            return
        while files and self.max_files is not None and len(files) > self.max_files:
            _unlink(files.popleft())
        if self.max_age_seconds is not None:
            cutoff = time.strftime(
                "%Y%m%dT%H%M%S", time.gmtime(now - self.max_age_seconds)
            )
            while files and os.path.basename(files[0])[:15] < cutoff:
                _unlink(files.popleft())


def _write_all(handle: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view) :]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _maybe_json(event: ServerSentEvent) -> Any:
    if event.data[:1] in ("{", "["):
        try:
            return event.json()
        except ValueError:
            pass
    return event.data


__all__ = ["TraceMiddleware", "build", "check_directory", "REDACTED"]
