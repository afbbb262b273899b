"""
Deciding which session a call belongs to, from its history (or from the
session a client names in a header, which the stage reads).

A conversation *state* is a history that ends with an answer.  When a call
completes, the state "its history + its answer" is remembered under keys
that name the session (exact, fuzzy, system); a later call whose history starts with that state
continues the session.  Keys are built from the digests of the messages next
to the state's end (and the system prompt, the first message and the length),
so a lookup hashes only the end of a history, whatever its length.  The rules,
precisely, are in docs/sessions.md.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred

from llmgate.config import SessionConfig
from llmgate.interfaces import ISessionStore
from llmgate.sessions.canonical import Digests, History, answer_digests, digest, key_of

#: Messages before a state's end that its keys cover.
WINDOW = 3

#: How many messages a client may add after an answer (a user turn, tool
#: results of parallel calls) and still continue from it.
MAX_NEW_MESSAGES = 32

#: Cut points (answers) looked at, latest first: the last answer is where a
#: client continues; two more allow for a prefilled assistant message or an
#: answer the client wrote itself.
MAX_CUT_POINTS = 3

#: Non-system messages at most in a history where a reset phrase starts over.
SHORT_HISTORY = 3

# How a session was decided; the fuzzy ones are counted as fuzzy matches.
HEADER = "header"
CONTINUED = "continued"
BRANCHED = "branched"  # from an earlier state: regeneration, edit
RETRY = "retry"
TRUNCATED = "truncated"  # oldest turns dropped by the client
SYSTEM_CHANGED = "system_changed"  # the client rewrote its system prompt
PREVIOUS_RESPONSE = "previous_response"
NEW = "new"
RESET = "reset"
FUZZY = frozenset({BRANCHED, RETRY, TRUNCATED, SYSTEM_CHANGED})


@attrs.frozen
class Decision:
    session_id: str
    how: str

    @property
    def fuzzy(self) -> bool:
        return self.how in FUZZY


#: A pending call's decision until it is made (shared: Decision is frozen).
_UNDECIDED = Decision("", NEW)


@attrs.define
class Pending:
    """
    What a call's completion needs to remember its state.
    """

    decision: Decision
    history: History
    digests: Digests
    retry_key: bytes
    #: False for a call that is never answered (token counting): it is
    #: labelled only when it continues a session, and leaves no state.
    create: bool = True


#: System messages skipped at most when the system key looks for turns.
MAX_SKIPPED = 16


def _is_system(message: Any) -> bool:
    """
    A system (or developer) message among the turns: system material a
    client places between them (Claude Code's environment and model lines,
    Codex's instructions), which the system key passes over.
    """
    return isinstance(message, dict) and message.get("role") in ("system", "developer")


def _turns_key(get: Callable[[int], bytes], messages: Sequence[Any], end: int) -> bytes:
    """
    The system key of the state ending at ``end``: its first turn and its
    last :data:`WINDOW` turns, system messages passed over, so that neither
    the system prompt nor the system material between the turns counts.
    Only the two ends of the history are looked at; indices past
    ``messages`` are the answer's, never system.
    """
    count = len(messages)
    window: list[bytes | None] = []
    index, skipped = end - 1, 0
    while index >= 0 and len(window) < WINDOW and skipped <= MAX_SKIPPED:
        if index < count and _is_system(messages[index]):
            skipped += 1
        else:
            window.append(get(index))
        index -= 1
    first = None
    for i in range(min(end, MAX_SKIPPED)):
        if not (i < count and _is_system(messages[i])):
            first = get(i)
            break
    return key_of(b"S", first, *([None] * (WINDOW - len(window))), *reversed(window))


def _is_answer(message: Any) -> bool:
    if not isinstance(message, dict):
        return False
    if message.get("role") == "assistant":
        return True
    return message.get("type") in ("function_call", "message") and message.get("role", "assistant") == "assistant"


class SessionDetector:
    """
    Session decisions over a session store.

    :ivar counts: decisions by kind, plus ``cache_hits``/``cache_misses``
        and ``fuzzy_matches``.
    """

    def __init__(self, store: ISessionStore, config: SessionConfig) -> None:
        self.store = store
        self.config = config
        self.reset_phrases = tuple(p.lower() for p in config.reset_phrases)
        self.counts: Counter[str] = Counter()

    # -- keys ---------------------------------------------------------------

    @staticmethod
    def _window(digests: Callable[[int], bytes], end: int) -> list[bytes | None]:
        return [digests(i) if i >= 0 else None for i in range(end - WINDOW, end)]

    def exact_key(self, history: History, first: bytes | None, end: int, window: list[Any]) -> bytes:
        return key_of(b"E", history.system, end, first, *window)

    def fuzzy_key(self, history: History, window: list[Any]) -> bytes:
        return key_of(b"F", history.system, *window)

    @staticmethod
    def system_key(history: History, get: Callable[[int], bytes], end: int) -> bytes:
        """
        The key of a state whatever system prompt the client sends this
        time: the same first turn and the same last turns (answers included),
        system messages among them passed over (see :func:`_turns_key`);
        indices past the history's messages are its answer's.
        """
        return _turns_key(get, history.messages, end)

    @staticmethod
    def response_key(response_id: str) -> bytes:
        return key_of(b"P", digest(response_id))

    # -- a call arrives -------------------------------------------------------------

    def begin(
        self, history: History, named: str | None = None, create: bool = True
    ) -> tuple[Pending, Deferred[Decision] | Decision]:
        """
        Decide the session of a call.

        :param named: a session id the client gave in a header.
        :return: the pending record for :meth:`complete`, and the decision (or
            a Deferred of it, from a networked store).
        """
        digests = Digests(history)
        count = len(digests)
        get = digests.__getitem__
        first = digests[0] if count else None
        retry_key = key_of(b"R", history.system, count, first, *self._window(get, count))
        pending = Pending(_UNDECIDED, history, digests, retry_key, create)
        if named:
            return pending, self._decided(pending, named, HEADER, touch=True)
        if self._is_reset(history):
            return pending, self._new(pending, RESET)
        # The common case first: the call continues the state its latest
        # answer left.  Only when no session knows that state (nor the
        # Responses API's previous response) are the other cut points hashed
        # and looked up, in the documented order: a continuing call hashes
        # the first message and the last few, whatever the history's length.
        messages = history.messages
        low = max(0, count - 1 - MAX_NEW_MESSAGES)
        latest = next((end for end in range(count - 1, low, -1) if _is_answer(messages[end - 1])), None)
        keys: list[bytes] = []
        kinds: list[str] = []
        if history.previous_response_id:
            keys.append(self.response_key(history.previous_response_id))
            kinds.append(PREVIOUS_RESPONSE)
        if latest is not None:
            keys.append(self.exact_key(history, first, latest, self._window(get, latest)))
            kinds.append(CONTINUED)
        if not keys:
            return pending, self._find_rest(pending, first, latest)
        found = self.store.find(keys)
        if isinstance(found, Deferred):
            return pending, found.addCallback(self._after_first, pending, kinds, first, latest)
        return pending, self._after_first(found, pending, kinds, first, latest)

    def _after_first(
        self, found: Any, pending: Pending, kinds: Sequence[str], first: bytes | None, latest: int | None
    ) -> Any:
        if found is not None:
            return self._found(found, pending, kinds)
        return self._find_rest(pending, first, latest)

    def _find_rest(self, pending: Pending, first: bytes | None, latest: int | None) -> Any:
        history = pending.history
        digests = pending.digests
        get = digests.__getitem__
        count = len(digests)
        messages = history.messages
        keys: list[bytes] = []
        kinds: list[str] = []
        ends = []
        for end in range(count - 1, max(0, count - 1 - MAX_NEW_MESSAGES), -1):
            if _is_answer(messages[end - 1]):
                ends.append(end)
                if len(ends) == MAX_CUT_POINTS:
                    break
        windows = [self._window(get, end) for end in ends]
        for end, window in zip(ends, windows):
            if end == latest:
                continue  # looked up already
            keys.append(self.exact_key(history, first, end, window))
            kinds.append(CONTINUED)
        keys.append(pending.retry_key)
        kinds.append(RETRY)
        if self.config.fuzzy_matching:
            for window in windows:
                keys.append(self.fuzzy_key(history, window))
                kinds.append(TRUNCATED)
            for end in ends:
                keys.append(self.system_key(history, get, end))
                kinds.append(SYSTEM_CHANGED)
        found = self.store.find(keys)
        if isinstance(found, Deferred):
            return found.addCallback(self._found, pending, kinds)
        return self._found(found, pending, kinds)

    def _found(
        self, found: tuple[int, str, bool] | None, pending: Pending, kinds: Sequence[str]
    ) -> Deferred[Decision] | Decision:
        if found is None:
            return self._new(pending, NEW)
        index, session_id, latest = found
        how = kinds[index]
        if how == RETRY and not self.config.fuzzy_matching:
            return self._new(pending, NEW)
        if how == CONTINUED and not latest:
            how = BRANCHED
            if not self.config.fuzzy_matching:
                how = CONTINUED
        return self._decided(pending, session_id, how, touch=True)

    def _new(self, pending: Pending, how: str) -> Deferred[Decision] | Decision:
        if not pending.create:
            pending.decision = Decision("", how)
            return pending.decision
        created = self.store.new_session()
        if isinstance(created, Deferred):
            return created.addCallback(lambda session_id: self._decided(pending, session_id, how))
        return self._decided(pending, created, how)

    def _decided(self, pending: Pending, session_id: str, how: str, touch: bool = False) -> Any:
        decision = Decision(session_id, how)
        pending.decision = decision
        self.counts[how] += 1
        if how in (NEW, RESET):
            self.counts["cache_misses"] += 1
        elif how != HEADER:
            self.counts["cache_hits"] += 1
        if decision.fuzzy:
            self.counts["fuzzy_matches"] += 1
        if touch:
            touched = self.store.touch(session_id)
            if isinstance(touched, Deferred):
                return touched.addCallback(lambda _: decision)
        return decision

    def _is_reset(self, history: History) -> bool:
        if not self.reset_phrases or len(history.messages) > SHORT_HISTORY:
            return False
        if not any(_is_answer(m) for m in history.messages):
            # A fresh start needs no phrase to be new; and a first call
            # that says "new chat" is no reason to skip a retry match.
            return False
        text = history.last_user_text()
        return any(phrase in text for phrase in self.reset_phrases)

    # -- the call ends -----------------------------------------------------------------

    def complete(
        self,
        pending: Pending,
        answer: Any | None,
        response_id: str | None = None,
    ) -> Any:
        """
        Remember the state a completed call leaves: its history plus its
        answer.  A call that got no answer is remembered only so that an
        identical retry finds its session.
        """
        session_id = pending.decision.session_id
        if not session_id:
            return None
        history = pending.history
        if not pending.create:
            return None
        if answer is None:
            return self.store.remember(session_id, [pending.retry_key], latest=False)
        if pending.decision.how == RETRY:
            # The retried call got its answer: nothing is left to retry, and
            # a later identical first call is a new conversation.
            self.store.forget(session_id, [pending.retry_key])
        digests = pending.digests
        extra = answer_digests(history.provider, answer)
        count = len(digests)

        def get(index: int) -> bytes:
            return digests[index] if index < count else extra[index - count]

        end = count + len(extra)
        first = get(0) if end else None
        window = self._window(get, end)
        keys = [self.exact_key(history, first, end, window)]
        if self.config.fuzzy_matching:
            keys.append(self.fuzzy_key(history, window))
            keys.append(self.system_key(history, get, end))
        if response_id:
            keys.append(self.response_key(response_id))
        return self.store.remember(session_id, keys)
