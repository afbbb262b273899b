"""
The in-memory session store: bounded, least recently used evicted, expired
by time since last use, and never scanned whole on a request.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections import OrderedDict, deque
from typing import Any, Mapping, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from llmgate.interfaces import ISessionStore

#: State keys kept per session: enough to branch back several turns
#: (regenerations, edits) without letting one session grow without bound.
KEYS_PER_SESSION = 64


class _SessionIds:
    """
    Session ids: 96 bits of a keyed BLAKE2b over a counter, the key drawn
    from ``os.urandom`` once per process.  As unguessable as 96 random bits
    to anyone without the key, and no system call per session: ``os.urandom``
    releases the GIL, and the reactor thread then waited for any other
    thread holding it (measured: 120 us a call with the trace writer busy).
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._key = os.urandom(32)
        self._counter = itertools.count()

    def __call__(self) -> str:
        digest = hashlib.blake2b(
            next(self._counter).to_bytes(8, "big"), key=self._key, digest_size=12
        )
        return "sess_" + digest.hexdigest()


#: A new session id.
new_session_id = _SessionIds()


@attrs.define
class _Session:
    id: str
    last_used: float
    keys: deque[bytes] = attrs.field(factory=deque)
    latest: frozenset[bytes] = frozenset()


@implementer(ISessionStore)
class MemorySessionStore:
    """
    Sessions in a dict ordered by last use: the least recently used is at
    the front, so both eviction and expiry look only at the front.

    :param clock: time source (``IReactorTime``), injected for tests.
    """

    #: One process's memory: nothing else reads it.
    shared = False

    def __init__(self, clock: IReactorTime, max_sessions: int = 10_000, ttl: float = 3600.0) -> None:
        self.clock = clock
        self.max_sessions = max_sessions
        self.ttl = ttl
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._keys: dict[bytes, str] = {}
        self.created = 0
        self.expired = 0
        self.evicted = 0
        self._creations: deque[float] = deque()

    # -- ISessionStore ------------------------------------------------------------

    def find(self, keys: Sequence[bytes]) -> tuple[int, str, bool] | None:
        self._expire()
        for index, key in enumerate(keys):
            session_id = self._keys.get(key)
            if session_id is None:
                continue
            session = self._sessions.get(session_id)
            if session is None:
                del self._keys[key]
                continue
            return index, session_id, key in session.latest
        return None

    def remember(self, session_id: str, keys: Sequence[bytes], latest: bool = True) -> None:
        session = self._live(session_id)
        owned = []
        for key in keys:
            owner = self._keys.setdefault(key, session_id)
            if owner == session_id:
                owned.append(key)
                session.keys.append(key)
        if latest:
            session.latest = frozenset(owned)
        while len(session.keys) > KEYS_PER_SESSION:
            old = session.keys.popleft()
            if self._keys.get(old) == session_id and old not in session.latest:
                del self._keys[old]

    def forget(self, session_id: str, keys: Sequence[bytes]) -> None:
        for key in keys:
            if self._keys.get(key) == session_id:
                del self._keys[key]

    def new_session(self) -> str:
        session_id = new_session_id()
        self._live(session_id)
        return session_id

    def touch(self, session_id: str) -> None:
        self._live(session_id)

    def stats(self) -> Mapping[str, Any]:
        self._expire()
        now = self.clock.seconds()
        while self._creations and self._creations[0] < now - 60:
            self._creations.popleft()
        return {
            "active_sessions": len(self._sessions),
            "sessions_created": self.created,
            "sessions_expired": self.expired,
            "sessions_evicted": self.evicted,
            "session_creation_rate_per_minute": len(self._creations),
        }

    # -- internals --------------------------------------------------------------------

    def _live(self, session_id: str) -> _Session:
        """
        The session, created if new, moved to the back as most recently used.
        """
        now = self.clock.seconds()
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(session_id, now)
            self.created += 1
            self._creations.append(now)
            if len(self._creations) > 100_000:
                self._creations.popleft()
            while len(self._sessions) > self.max_sessions:
                self._drop(next(iter(self._sessions)))
                self.evicted += 1
        else:
            session.last_used = now
            self._sessions.move_to_end(session_id)
        return session

    def _expire(self) -> None:
        cutoff = self.clock.seconds() - self.ttl
        sessions = self._sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest.last_used > cutoff:
                break
            self._drop(oldest.id)
            self.expired += 1

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id)
        for key in session.keys:
            if self._keys.get(key) == session_id:
                del self._keys[key]
