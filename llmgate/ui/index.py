"""
The index of the trace directory: every call's summary, grouped by session,
bounded, kept current as files land and go.

Files are listed, read and parsed in a thread (``run_in_thread``); the
reactor thread only merges the small summaries.  Several processes (workers,
machines on a shared volume) may write the directory: the index shows every
file, whoever wrote it.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
import itertools
from llmgate import fastjson
import os
from typing import Any, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger

from llmgate.middleware.live import Hub
from llmgate.ui.stats import MinuteStats
from llmgate.ui.summary import CallSummary, added_messages, summarize

SUFFIX = ".json"
#: Files parsed per trip to the thread pool.
BATCH = 1000
#: Bytes asked for by the first read of a trace file (most fit).
READ_AHEAD = 64 * 1024
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)

RunInThread = Callable[..., Deferred]


@attrs.define(slots=True, eq=False)
class SessionSummary:
    id: str
    #: Call ids, oldest first.
    calls: list[str] = attrs.field(factory=list)
    provider: str | None = None
    model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    errors: int = 0
    first: float = 0.0
    last: float = 0.0
    preview: str = ""
    #: No session id in the traces (session detection off): one call alone.
    sessionless: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "calls": len(self.calls),
            "provider": self.provider,
            "model": self.model,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "errors": self.errors,
            "first": self.first,
            "last": self.last,
            "preview": self.preview,
            "sessionless": self.sessionless,
        }


def trace_name(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(".")


def call_id_of(name: str) -> str:
    """
    The exchange id in a trace file's name (``<time>Z-<id>.json``).
    """
    return name[name.find("Z-") + 2 : -len(SUFFIX)]


def read_summaries(directory: str, names: Iterable[str]) -> list[CallSummary]:
    """
    Parse trace files (in a thread); unreadable ones are skipped.  Files are
    read with bare system calls: ``open()`` builds a buffered file object
    per file, which cost as much as parsing a small trace.
    """
    found = []
    join = os.path.join
    read = _read_bytes
    loads = fastjson.loads
    for name in names:
        try:
            document = loads(read(join(directory, name)))
        except (OSError, ValueError, RecursionError):
            continue
        summary = summarize(document, name)
        if summary is not None:
            found.append(summary)
    return found


def _read_bytes(path: str) -> bytes:
    handle = os.open(path, _READ)
    try:
        data = os.read(handle, READ_AHEAD)
        if len(data) < READ_AHEAD:
            return data
        pieces = [data]
        while True:
            more = os.read(handle, 1 << 20)
            if not more:
                return b"".join(pieces)
            pieces.append(more)
    finally:
        os.close(handle)


class TraceIndex:
    """
    :param run_in_thread: ``f(*args) -> Deferred`` running ``f`` off the
        reactor thread (``deferToThreadPool``); tests pass a synchronous one.
    :param hub: told of every call indexed after the start (``call_indexed``).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        directory: str,
        run_in_thread: RunInThread,
        max_sessions: int = 10_000,
        max_calls: int = 100_000,
        hub: Hub | None = None,
    ) -> None:
        self.reactor = reactor
        self.directory = directory
        self.run_in_thread = run_in_thread
        self.max_sessions = max_sessions
        self.max_calls = max_calls
        self.hub = hub or Hub()
        # Ordered dicts, not dicts: the oldest entry is taken from the front
        # over and over, which in a dict scans the holes left by the ones
        # taken before it.
        self.calls: OrderedDict[str, CallSummary] = OrderedDict()
        self.sessions: OrderedDict[str, SessionSummary] = OrderedDict()
        self.stats = MinuteStats()
        #: File name to call id, for files that go.
        self.by_file: dict[str, str] = {}
        #: Files read that held no trace (or were evicted): not read again.
        self.skipped: set[str] = set()
        self.ready = False
        self._incoming: set[str] = set()
        self._reading = False

    # -- loading --------------------------------------------------------------

    @inlineCallbacks
    def load(self) -> Any:
        """
        Index what the directory holds: the newest ``max_calls`` files (file
        names begin with their UTC time), read in batches.
        """
        names = yield self.run_in_thread(self._newest_names)
        for start in range(0, len(names), BATCH):
            batch = names[start : start + BATCH]
            found = yield self.run_in_thread(read_summaries, self.directory, batch)
            self.add(found, publish=False)
            read = {call.file for call in found}
            self.skipped.update(name for name in batch if name not in read)
        self.ready = True
        self.hub.publish("ready", self.state())
        self.log.info(
            "live view: indexed {calls} calls in {sessions} sessions from {directory}",
            calls=len(self.calls),
            sessions=len(self.sessions),
            directory=self.directory,
        )
        if self._incoming:
            self._read_incoming()

    def _newest_names(self) -> list[str]:
        names = sorted(n for n in os.listdir(self.directory) if trace_name(n))
        return names[-self.max_calls :]

    # -- keeping current ------------------------------------------------------

    def add_own(self, call: CallSummary) -> None:
        """
        A call this process relayed has ended: indexed now, from the
        exchange; its file, when it lands, need not be read.
        """
        calls = self.calls
        if call.id in calls:
            return
        calls[call.id] = call
        self._into_session(call)
        self.stats.add(call)
        if len(calls) > self.max_calls or len(self.sessions) > self.max_sessions:
            self._bound()

    def file_added(self, name: str) -> None:
        """
        A file landed (inotify or a poll): read it soon, with others; a file
        of a call indexed already (this process's) is only noted.
        """
        if name in self.by_file or name in self.skipped or not trace_name(name):
            return
        call = self.calls.get(name[name.find("Z-") + 2 : -5])  # call_id_of, inlined
        if call is not None and call.file is None:
            call.file = name
            self.by_file[name] = call.id
            if self.hub.active:
                self.hub.publish("call_indexed", call.as_json())
            return
        self._incoming.add(name)
        if self.ready and not self._reading:
            self._reading = True
            self.reactor.callLater(0.02, self._read_incoming)

    def file_removed(self, name: str) -> None:
        call_id = self.by_file.get(name)
        if call_id is not None:
            self._remove_call(call_id)
        self.skipped.discard(name)

    def _read_incoming(self) -> None:
        names, self._incoming = sorted(self._incoming), set()
        self._reading = True
        d = self.run_in_thread(read_summaries, self.directory, names)

        def done(found: list[CallSummary]) -> None:
            self.add(found)
            read = {call.file for call in found}
            self.skipped.update(name for name in names if name not in read)
            self._reading = False
            if self._incoming:
                self._reading = True
                self.reactor.callLater(0.02, self._read_incoming)

        def failed(failure: Any) -> None:
            self._reading = False
            self.log.failure("live view: reading new trace files failed", failure)

        d.addCallbacks(done, failed)

    def scan_difference(self) -> tuple[list[str], list[str]]:
        """
        Files added and removed since the last look (in a thread, for the
        poll): one listing, compared with what is known.
        """
        present = {n for n in os.listdir(self.directory) if trace_name(n)}
        known = list(self.by_file) + list(self.skipped)
        known_set = set(known)
        return sorted(present - known_set), [n for n in known if n not in present]

    # -- the index ------------------------------------------------------------

    def add(self, found: Iterable[CallSummary], publish: bool = True) -> None:
        calls = self.calls
        add_stats = self.stats.add
        added = []
        for call in found:
            known = calls.get(call.id)
            if known is not None:
                if known.file is None and call.file is not None:
                    known.file = call.file  # this process's call, read at start
                    self.by_file[call.file] = call.id
                continue
            calls[call.id] = call
            if call.file is not None:
                self.by_file[call.file] = call.id
            self._into_session(call)
            add_stats(call)
            added.append(call)
        if len(calls) > self.max_calls or len(self.sessions) > self.max_sessions:
            self._bound()
        if publish and self.hub.active:
            for call in added:
                if call.id in calls:
                    self.hub.publish("call_indexed", call.as_json())

    def _into_session(self, call: CallSummary) -> None:
        key = call.session_id or "call-" + call.id
        sessions = self.sessions
        # The dict is kept in order of activity: a session with a new call
        # moves to its end, so the least recently active is the first.
        session = sessions.get(key)
        when = call.time
        if session is None:
            session = sessions[key] = SessionSummary(
                id=key, first=when, last=when, sessionless=call.session_id is None
            )
        else:
            sessions.move_to_end(key)
        calls = session.calls
        if not calls or when >= session.last:
            calls.append(call.id)
        else:  # a file that landed late (another worker's, a slow disk)
            times = [self.calls[c].time for c in calls]
            calls.insert(bisect.bisect_right(times, when), call.id)
        session.tokens_in += call.tokens_in
        session.tokens_out += call.tokens_out
        if call.failed:
            session.errors += 1
        if when < session.first:
            session.first = when
        if when >= session.last:
            session.last = when
            session.provider = call.provider or session.provider
            session.model = call.model or session.model
            session.preview = call.preview or session.preview

    def _remove_call(self, call_id: str) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        if call.file is not None:
            self.by_file.pop(call.file, None)
        key = call.session_id or "call-" + call.id
        session = self.sessions.get(key)
        if session is None:
            return
        session.calls.remove(call_id)
        if not session.calls:
            del self.sessions[key]
            return
        session.tokens_in -= call.tokens_in
        session.tokens_out -= call.tokens_out
        session.errors -= call.failed
        session.first = self.calls[session.calls[0]].time
        session.last = self.calls[session.calls[-1]].time

    def _forget(self, call_id: str) -> None:
        file = self.calls[call_id].file
        if file is not None:
            self.skipped.add(file)  # not read again by a poll
        self._remove_call(call_id)

    def _bound(self) -> None:
        """
        Drop the calls indexed first beyond ``max_calls`` (files land in
        about the order of their time, so these are the oldest), and the
        least recently active sessions beyond ``max_sessions``, with their
        calls.
        """
        calls = self.calls
        while len(calls) > self.max_calls:
            self._forget(next(iter(calls)))
        sessions = self.sessions
        while len(sessions) > self.max_sessions:
            for call_id in list(next(iter(sessions.values())).calls):
                self._forget(call_id)

    # -- questions ------------------------------------------------------------

    def find_sessions(
        self, text: str = "", model: str = "", offset: int = 0, limit: int = 50
    ) -> tuple[int, list[SessionSummary]]:
        """
        Sessions, the most recently active first (the order their latest
        calls were indexed in), filtered: ``text`` is looked for in the
        session id, provider, model and last user text; ``model`` must match.
        """
        needle = text.lower()
        sessions = reversed(self.sessions.values())  # most recently active first
        if not needle and not model:
            return len(self.sessions), list(itertools.islice(sessions, offset, offset + limit))
        chosen = []
        for session in sessions:
            if model and session.model != model:
                continue
            if needle and not (
                needle in session.id.lower()
                or needle in (session.model or "").lower()
                or needle in (session.provider or "").lower()
                or needle in session.preview.lower()
            ):
                continue
            chosen.append(session)
        return len(chosen), chosen[offset : offset + limit]

    def session_calls(
        self, session_id: str, offset: int = 0, limit: int = 200
    ) -> Deferred[list[dict[str, Any]]] | None:
        """
        A session's calls, oldest first, each with the messages it added
        (its file read in a thread); None for an unknown session.
        """
        session = self.sessions.get(session_id)
        if session is None:
            return None
        calls = [self.calls[c] for c in session.calls[offset : offset + limit]]
        return self.run_in_thread(_with_messages, self.directory, calls)

    def read_call(self, call_id: str) -> Deferred[Any] | None:
        """
        A call's whole trace document, read in a thread; None when unknown.
        """
        call = self.calls.get(call_id)
        if call is None:
            return None
        if call.file is None:  # its trace has not landed (or was dropped)
            return succeed(None)
        return self.run_in_thread(_read_document, os.path.join(self.directory, call.file))

    def state(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "ready": self.ready,
            "calls": len(self.calls),
            "sessions": len(self.sessions),
        }


def _read_document(path: str) -> Any:
    try:
        return fastjson.loads(_read_bytes(path))
    except (OSError, ValueError, RecursionError):
        return None


def _with_messages(directory: str, calls: list[CallSummary]) -> list[dict[str, Any]]:
    result = []
    for call in calls:
        entry = call.as_json()
        document = None
        if call.file is not None:
            document = _read_document(os.path.join(directory, call.file))
        entry["messages"] = added_messages(document)
        entry["missing"] = document is None
        result.append(entry)
    return result
