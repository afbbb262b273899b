"""
Session detection, rule by rule (docs/sessions.md): the detector over the
in-memory store, time from a ``Clock``, histories built as clients build
them.  End-to-end accuracy is measured in test_session_simulation.py.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from itertools import count
from typing import Any, Iterator

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from llmgate.answer import StreamAnswer
from llmgate.config import SessionConfig
from llmgate.exchange import Exchange, RequestRecord, ResponseRecord
from llmgate.interfaces import ISessionStore
from llmgate.sessions.canonical import Digests, history_of
from llmgate.sessions.detect import (
    BRANCHED,
    CONTINUED,
    HEADER,
    NEW,
    RESET,
    RETRY,
    TRUNCATED,
    Decision,
    SessionDetector,
)
from llmgate.sessions.memory import MemorySessionStore
from llmgate.sessions.stage import SessionStage
from llmgate.sse import ServerSentEvent

SYSTEM = "You are a helpful assistant."


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def chat(*messages: Any, system: str = SYSTEM) -> Any:
    body = {"model": "gpt-x", "messages": [{"role": "system", "content": system}, *messages]}
    return history_of("openai", b"/v1/chat/completions", body)


def anthropic(*messages: Any, system: Any = SYSTEM) -> Any:
    body = {"model": "claude-x", "max_tokens": 10, "system": system, "messages": list(messages)}
    return history_of("anthropic", b"/v1/messages", body)


class Gateway:
    """
    A detector over a store, on a Clock; calls go in and complete at once.
    """

    def __init__(self, max_sessions: int = 10_000, ttl: float = 3600.0, **config: Any) -> None:
        self.clock = Clock()
        self.store = MemorySessionStore(self.clock, max_sessions, ttl)
        self.detector = SessionDetector(self.store, SessionConfig(**config))
        self._answers = count(1)

    def call(self, history: Any, answer: Any = "auto", named: str | None = None) -> Decision:
        """
        Decide ``history``'s session and complete it with ``answer`` (None:
        the call failed; "auto": a fresh answer text).
        """
        if answer == "auto":
            answer = assistant(self.answer_text())
        pending, decision = self.detector.begin(history, named)
        assert isinstance(decision, Decision)
        self.detector.complete(pending, answer)
        return decision

    def answer_text(self) -> str:
        return f"answer number {next(self._answers)}"

    @property
    def counts(self) -> Any:
        return self.detector.counts


class Conversation:
    """
    An OpenAI chat client: it keeps its history and sends back every answer.
    """

    def __init__(self, gateway: Gateway, opening: str = "Hello there", system: str = SYSTEM) -> None:
        self.gateway = gateway
        self.system = system
        self.messages: list[Any] = [user(opening)]
        self.decisions: list[Decision] = []
        self.last_answer: Any = None

    def send(self, answer: Any = "auto") -> Decision:
        if answer == "auto":
            answer = assistant(self.gateway.answer_text())
        decision = self.gateway.call(chat(*self.messages, system=self.system), answer)
        self.decisions.append(decision)
        self.last_answer = answer
        return decision

    def turn(self, text: str) -> Decision:
        """
        Send, keep the answer, and add the next user message.
        """
        decision = self.send()
        self.messages += [self.last_answer, user(text)]
        return decision

    @property
    def sessions(self) -> set[str]:
        return {d.session_id for d in self.decisions}


class ContinuationTests(SynchronousTestCase):
    def test_every_turn_continues_the_first(self) -> None:
        gateway = Gateway()
        conversation = Conversation(gateway)
        for n in range(6):
            conversation.turn(f"question {n}")
        self.assertEqual(len(conversation.sessions), 1)
        self.assertEqual([d.how for d in conversation.decisions], [NEW] + [CONTINUED] * 5)
        self.assertEqual(gateway.counts["cache_misses"], 1)
        self.assertEqual(gateway.counts["cache_hits"], 5)
        self.assertEqual(gateway.counts["fuzzy_matches"], 0)

    def test_parallel_tool_results_continue(self) -> None:
        """
        Several messages after the answer (tool results) still continue it.
        """
        gateway = Gateway()
        calls = [
            {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": f'{{"i":{i}}}'}}
            for i in range(3)
        ]
        answer = {"role": "assistant", "content": None, "tool_calls": calls}
        first = gateway.call(chat(user("go")), answer)
        results = [{"role": "tool", "tool_call_id": f"call_{i}", "content": f"result {i}"} for i in range(3)]
        second = gateway.call(chat(user("go"), answer, *results))
        self.assertEqual((second.session_id, second.how), (first.session_id, CONTINUED))

    def test_two_conversations_stay_apart(self) -> None:
        gateway = Gateway()
        a, b = Conversation(gateway, "Plan my trip"), Conversation(gateway, "Fix my code")
        for n in range(4):
            a.turn(f"a{n}")
            b.turn(f"b{n}")
        self.assertEqual(len(a.sessions), 1)
        self.assertEqual(len(b.sessions), 1)
        self.assertNotEqual(a.sessions, b.sessions)


class IdenticalOpeningTests(SynchronousTestCase):
    def test_identical_openings_get_two_sessions_and_stay_apart(self) -> None:
        gateway = Gateway()
        a, b = Conversation(gateway, "Same question"), Conversation(gateway, "Same question")
        for n in range(4):
            a.turn(f"same follow-up {n}")
            b.turn(f"same follow-up {n}")
        self.assertEqual(len(a.sessions), 1)
        self.assertEqual(len(b.sessions), 1)
        self.assertNotEqual(a.sessions, b.sessions)
        self.assertEqual(gateway.counts["fuzzy_matches"], 0)

    def test_identical_openings_at_the_same_moment(self) -> None:
        """
        Both first calls are in flight before either completes.
        """
        gateway = Gateway()
        detector = gateway.detector
        history = chat(user("Same question"))
        pending_a, a = detector.begin(history)
        pending_b, b = detector.begin(history)
        detector.complete(pending_a, assistant("answer A"))
        detector.complete(pending_b, assistant("answer B"))
        self.assertNotEqual(a.session_id, b.session_id)
        next_a = gateway.call(chat(user("Same question"), assistant("answer A"), user("more")))
        next_b = gateway.call(chat(user("Same question"), assistant("answer B"), user("more")))
        self.assertEqual((next_a.session_id, next_a.how), (a.session_id, CONTINUED))
        self.assertEqual((next_b.session_id, next_b.how), (b.session_id, CONTINUED))

    def test_identical_states_go_to_the_first_claimant(self) -> None:
        """
        The documented limit: identical openings answered identically share
        their later keys, and the first to claim a key keeps it.
        """
        gateway = Gateway()
        a = gateway.call(chat(user("Same question")), assistant("same answer"))
        b = gateway.call(chat(user("Same question")), assistant("same answer"))
        self.assertNotEqual(a.session_id, b.session_id)
        later = gateway.call(chat(user("Same question"), assistant("same answer"), user("next")))
        self.assertEqual(later.session_id, a.session_id)


class StoreTimeTests(SynchronousTestCase):
    def test_session_expires_after_ttl_not_before(self) -> None:
        gateway = Gateway(ttl=100.0)
        conversation = Conversation(gateway)
        first = conversation.turn("one")
        gateway.clock.advance(99.9)
        self.assertEqual(conversation.turn("two").session_id, first.session_id)
        # the TTL counts from the last call
        gateway.clock.advance(99.9)
        self.assertEqual(conversation.turn("three").session_id, first.session_id)
        self.assertEqual(gateway.store.expired, 0)
        gateway.clock.advance(100.0)
        late = conversation.send()
        self.assertEqual(late.how, NEW)
        self.assertNotEqual(late.session_id, first.session_id)
        self.assertEqual(gateway.store.expired, 1)
        self.assertEqual(gateway.store.stats()["active_sessions"], 1)

    def test_least_recently_used_session_is_evicted(self) -> None:
        gateway = Gateway(max_sessions=3)
        a, b, c = (Conversation(gateway, name) for name in ("alpha", "beta", "gamma"))
        for conversation in (a, b, c):
            conversation.turn("one")
            gateway.clock.advance(1)
        a.turn("two")  # a is now the most recently used: b is the least
        gateway.clock.advance(1)
        d = Conversation(gateway, "delta")
        d.turn("one")
        self.assertEqual(gateway.store.evicted, 1)
        self.assertEqual(gateway.store.stats()["active_sessions"], 3)
        self.assertEqual(a.turn("three").how, CONTINUED)
        self.assertEqual(c.turn("two").how, CONTINUED)
        self.assertEqual(d.turn("two").how, CONTINUED)
        lost = b.turn("two")
        self.assertEqual(lost.how, NEW)
        self.assertNotIn(lost.session_id, {x.decisions[0].session_id for x in (a, b, c, d)})

    def test_a_lookup_keeps_a_session_alive(self) -> None:
        gateway = Gateway(max_sessions=2)
        a, b = Conversation(gateway, "alpha"), Conversation(gateway, "beta")
        a.turn("one")
        b.turn("one")
        a.turn("two")  # touches a
        Conversation(gateway, "gamma").turn("one")
        self.assertEqual(a.turn("three").how, CONTINUED)
        self.assertEqual(b.send().how, NEW)


class FuzzyTests(SynchronousTestCase):
    def conversation(self, **config: Any) -> tuple[Gateway, Conversation]:
        gateway = Gateway(**config)
        conversation = Conversation(gateway, "Write a poem")
        conversation.turn("Make it rhyme")
        conversation.turn("Shorter please")
        return gateway, conversation

    def test_regenerated_answer_branches(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        conversation.send()  # answered ...
        again = conversation.send()  # ... and the same history sent again
        self.assertEqual((again.session_id, again.how), (session, BRANCHED))
        self.assertEqual(gateway.counts["fuzzy_matches"], 1)
        # and the conversation goes on from the new answer
        conversation.messages += [conversation.last_answer, user("thanks")]
        self.assertEqual(conversation.send().how, CONTINUED)
        # or from the old one: an earlier state
        self.assertEqual(gateway.counts["fuzzy_matches"], 1)

    def test_regenerating_the_very_first_answer_is_a_new_session(self) -> None:
        """
        The documented limit: it is identical to a new conversation's start.
        """
        gateway = Gateway()
        conversation = Conversation(gateway, "Write a poem")
        first = conversation.send()
        again = conversation.send()
        self.assertEqual(again.how, NEW)
        self.assertNotEqual(again.session_id, first.session_id)

    def test_edited_last_message_branches(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        conversation.send()
        conversation.messages[-1] = user("Longer please")
        edited = conversation.send()
        self.assertEqual((edited.session_id, edited.how), (session, BRANCHED))
        self.assertEqual(gateway.counts["fuzzy_matches"], 1)

    def test_edit_further_back_branches(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        conversation.turn("And a title")
        conversation.turn("And a moral")
        # back to the state after the first answer, then a new message
        conversation.messages = conversation.messages[:2] + [user("Actually, a limerick")]
        edited = conversation.send()
        self.assertEqual((edited.session_id, edited.how), (session, BRANCHED))
        self.assertEqual(gateway.counts["fuzzy_matches"], 1)

    def test_retry_of_a_failed_first_call(self) -> None:
        gateway = Gateway()
        failed = gateway.call(chat(user("Write a poem")), None)
        again = gateway.call(chat(user("Write a poem")))
        self.assertEqual((again.session_id, again.how), (failed.session_id, RETRY))
        self.assertEqual(gateway.counts["fuzzy_matches"], 1)

    def test_retry_of_a_failed_later_call_continues(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        failed = conversation.send(answer=None)
        again = conversation.send()
        self.assertEqual((failed.session_id, failed.how), (session, CONTINUED))
        self.assertEqual((again.session_id, again.how), (session, CONTINUED))
        self.assertEqual(gateway.counts["fuzzy_matches"], 0)

    def test_retry_after_several_failures(self) -> None:
        gateway = Gateway()
        first = gateway.call(chat(user("Write a poem")), None)
        second = gateway.call(chat(user("Write a poem")), None)
        third = gateway.call(chat(user("Write a poem")))
        self.assertEqual({first.session_id, second.session_id, third.session_id}, {first.session_id})
        self.assertEqual(gateway.counts["retry"], 2)
        self.assertEqual(gateway.counts["fuzzy_matches"], 2)

    def test_truncated_history_continues(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        conversation.turn("And a title")
        # the client drops its two oldest messages to fit its window
        conversation.messages = conversation.messages[2:]
        truncated = conversation.turn("And a moral")
        self.assertEqual((truncated.session_id, truncated.how), (session, TRUNCATED))
        self.assertEqual(gateway.counts["fuzzy_matches"], 1)
        # the shorter history is now the state to continue, exactly
        self.assertEqual(conversation.send().how, CONTINUED)

    def test_truncation_that_keeps_the_first_message(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        conversation.turn("And a title")
        del conversation.messages[1:3]
        truncated = conversation.send()
        self.assertEqual((truncated.session_id, truncated.how), (session, TRUNCATED))

    def test_truncation_to_fewer_than_three_messages_is_lost(self) -> None:
        """
        The fuzzy key needs the last 3 messages of the state: a client that
        keeps fewer cannot be followed.
        """
        gateway, conversation = self.conversation()
        conversation.messages = conversation.messages[-2:]
        self.assertEqual(conversation.send().how, NEW)

    def test_fuzzy_matching_off(self) -> None:
        """
        With ``fuzzy_matching: false`` retries and truncations are new
        sessions, and a branch is reported as a continuation.
        """
        gateway = Gateway(fuzzy_matching=False)
        failed = gateway.call(chat(user("Write a poem")), None)
        self.assertNotEqual(gateway.call(chat(user("Write a poem"))).session_id, failed.session_id)
        conversation = Conversation(gateway, "Write a story")
        conversation.turn("Make it rhyme")
        conversation.turn("Shorter please")
        session = conversation.decisions[0].session_id
        conversation.send()
        again = conversation.send()
        self.assertEqual((again.session_id, again.how), (session, CONTINUED))
        conversation.messages = conversation.messages[2:]
        self.assertEqual(conversation.send().how, NEW)
        self.assertEqual(gateway.counts["fuzzy_matches"], 0)
        self.assertEqual(gateway.counts[TRUNCATED] + gateway.counts[RETRY] + gateway.counts[BRANCHED], 0)


class ResetTests(SynchronousTestCase):
    def test_reset_phrase_in_a_short_history_starts_over(self) -> None:
        gateway = Gateway()
        conversation = Conversation(gateway, "Hello")
        first = conversation.turn("Let's START OVER: a new topic")
        reset = conversation.turn("what now?")
        self.assertEqual(reset.how, RESET)
        self.assertNotEqual(reset.session_id, first.session_id)
        self.assertEqual(gateway.counts["cache_misses"], 2)
        # and the conversation goes on in the new session
        following = conversation.send()
        self.assertEqual((following.session_id, following.how), (reset.session_id, CONTINUED))

    def test_reset_phrase_in_a_long_history_continues(self) -> None:
        gateway = Gateway()
        conversation = Conversation(gateway, "Hello")
        conversation.turn("one")
        conversation.turn("Tell me how the game can start over after a loss")
        self.assertEqual(conversation.send().how, CONTINUED)

    def test_reset_phrase_in_a_first_call_is_just_new(self) -> None:
        gateway = Gateway()
        failed = gateway.call(chat(user("new chat: hello")), None)
        again = gateway.call(chat(user("new chat: hello")))
        self.assertEqual((failed.how, again.how), (NEW, RETRY))
        self.assertEqual(again.session_id, failed.session_id)
        self.assertEqual(gateway.counts[RESET], 0)

    def test_fresh_history_with_a_reset_phrase(self) -> None:
        """
        The same client starts over with a fresh history: a new session.
        """
        gateway = Gateway()
        conversation = Conversation(gateway, "Hello")
        conversation.turn("one")
        old = conversation.turn("two").session_id
        fresh = Conversation(gateway, "Let's start over: plan a trip")
        self.assertNotEqual(fresh.turn("more").session_id, old)
        self.assertEqual(fresh.send().how, CONTINUED)

    def test_configured_phrases(self) -> None:
        gateway = Gateway(reset_phrases=("tabula rasa",))
        conversation = Conversation(gateway, "Hello")
        conversation.turn("Tabula Rasa please")
        self.assertEqual(conversation.send().how, RESET)
        other = Conversation(gateway, "Hi")
        other.turn("let's start over")
        self.assertEqual(other.send().how, CONTINUED)

    def test_no_phrases_no_reset(self) -> None:
        gateway = Gateway(reset_phrases=())
        conversation = Conversation(gateway, "Hello")
        conversation.turn("start over")
        self.assertEqual(conversation.send().how, CONTINUED)

    def test_reset_phrase_in_anthropic_text_blocks(self) -> None:
        gateway = Gateway()
        opening = {"role": "user", "content": [{"type": "text", "text": "Hello"}]}
        gateway.call(anthropic(opening), {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]})
        reset = {"role": "user", "content": [{"type": "text", "text": "Forget "}, {"type": "text", "text": "everything"}]}
        decision = gateway.call(anthropic(opening, {"role": "assistant", "content": "Hi!"}, reset))
        self.assertEqual(decision.how, RESET)


def make_exchange(body: Any, headers: dict[bytes, bytes] | None = None, path: bytes = b"/v1/chat/completions") -> Exchange:
    raw = json.dumps(body).encode() if body is not None else b""
    return Exchange(
        id="x",
        provider="openai",
        request=RequestRecord(
            method=b"POST" if body is not None else b"GET",
            uri=path,
            headers=Headers({k: [v] for k, v in (headers or {}).items()}),
            body=raw,
        ),
        received=0.0,
    )


def answered(exchange: Exchange, text: str) -> Exchange:
    document = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    exchange.response = ResponseRecord(status=200, headers=[], body=bytearray(json.dumps(document).encode()))
    return exchange


class HeaderTests(SynchronousTestCase):
    def stage(self) -> SessionStage:
        return SessionStage(SessionDetector(MemorySessionStore(Clock()), SessionConfig()))

    def test_named_session(self) -> None:
        gateway = Gateway()
        decision = gateway.call(chat(user("Hello")), named="team:alice/42")
        self.assertEqual(decision, Decision("team:alice/42", HEADER))
        self.assertEqual(gateway.store.stats()["active_sessions"], 1)
        # a later call without the header finds it by content
        later = gateway.call(chat(user("Hello"), assistant("answer number 1"), user("more")))
        self.assertEqual((later.session_id, later.how), ("team:alice/42", CONTINUED))
        self.assertEqual(gateway.counts["cache_hits"], 1)
        self.assertEqual(gateway.counts["cache_misses"], 0)

    def test_header_wins_over_content(self) -> None:
        gateway = Gateway()
        first = gateway.call(chat(user("Hello")), assistant("hi"))
        named = gateway.call(chat(user("Hello"), assistant("hi"), user("more")), named="mine")
        self.assertNotEqual(first.session_id, "mine")
        self.assertEqual(named.session_id, "mine")

    def test_stage_uses_a_valid_header(self) -> None:
        stage = self.stage()
        exchange = make_exchange(
            {"model": "m", "messages": [user("Hi")]}, {b"x-llmgate-session-id": b" my.session-1 "}
        )
        stage.request_received(exchange)
        self.assertEqual(exchange.session_id, "my.session-1")
        self.assertEqual(exchange.notes["session_how"], HEADER)

    def test_stage_ignores_an_invalid_header(self) -> None:
        stage = self.stage()
        for bad in (b"has space", b"x" * 129, b"", b"caf\xc3\xa9", b"semi;colon"):
            exchange = make_exchange({"model": "m", "messages": [user("Hi")]}, {b"x-llmgate-session-id": bad})
            stage.request_received(exchange)
            self.assertTrue(exchange.session_id and exchange.session_id.startswith("sess_"), bad)
            self.assertEqual(exchange.notes["session_how"], NEW)

    def test_stage_labels_a_call_without_history_by_its_header(self) -> None:
        stage = self.stage()
        exchange = make_exchange(None, {b"x-llmgate-session-id": b"abc"}, path=b"/v1/models")
        stage.request_received(exchange)
        self.assertEqual(exchange.session_id, "abc")
        unnamed = make_exchange(None, path=b"/v1/models")
        stage.request_received(unnamed)
        self.assertIsNone(unnamed.session_id)

    def test_stage_remembers_the_answer(self) -> None:
        stage = self.stage()
        first = make_exchange({"model": "m", "messages": [user("Hi")]})
        stage.request_received(first)
        stage.exchange_finished(answered(first, "Hello!"))
        second = make_exchange(
            {"model": "m", "messages": [user("Hi"), {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}], "refusal": None}, user("Bye")]}
        )
        stage.request_received(second)
        self.assertEqual(second.session_id, first.session_id)
        self.assertEqual(stage.state()["cache_hits"], 1)


class EquivalenceTests(SynchronousTestCase):
    """
    A message has one digest however the client writes it back.
    """

    def digests(self, history: Any) -> list[bytes]:
        digests = Digests(history)
        return [digests[i] for i in range(len(digests))]

    def test_string_and_text_blocks(self) -> None:
        plain = chat(user("Hi"), assistant("Hello there"), user("Bye"))
        blocks = chat(
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there\n"}],
                "refusal": None,
                "annotations": [],
                "audio": None,
                "function_call": None,
                "tool_calls": None,
            },
            {"role": "user", "content": "  Bye  "},
        )
        self.assertEqual(self.digests(plain), self.digests(blocks))

    def test_anthropic_system_string_blocks_and_cache_control(self) -> None:
        a = anthropic(user("Hi"), system="Be brief.")
        b = anthropic(
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        )
        self.assertEqual(a.system, b.system)
        self.assertEqual(self.digests(a), self.digests(b))

    def test_text_blocks_answer_continues(self) -> None:
        gateway = Gateway()
        first = gateway.call(anthropic(user("Hi")), {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]})
        echoes = (
            "Hello!",
            [{"type": "text", "text": "Hello!", "citations": None}],
            [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "Hello!"}],
        )
        for echo in echoes:
            later = gateway.call(anthropic(user("Hi"), {"role": "assistant", "content": echo}, user(f"more {echo!r}")))
            self.assertEqual(later.session_id, first.session_id, echo)

    def test_reserialised_tool_call_arguments_continue(self) -> None:
        arguments = '{"path":"src/app.py","range":{"start":1,"end":20},"query":"café"}'
        answer = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "read", "arguments": arguments}}],
        }
        value = json.loads(arguments)
        for text in (
            json.dumps(value),
            json.dumps(value, indent=2, ensure_ascii=False),
            json.dumps(dict(reversed(list(value.items())))),
        ):
            gateway = Gateway()
            first = gateway.call(chat(user("Read it")), answer)
            echo = copy.deepcopy(answer)
            echo["tool_calls"][0]["function"]["arguments"] = text
            echo["content"] = ""
            later = gateway.call(
                chat(user("Read it"), echo, {"role": "tool", "tool_call_id": "call_1", "content": f"file {text}"})
            )
            self.assertEqual((later.session_id, later.how), (first.session_id, CONTINUED), text)

    def test_anthropic_tool_use_input_in_another_key_order(self) -> None:
        gateway = Gateway()
        use = {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x", "limit": 5, "opts": {"a": 1, "b": 2}}}
        first = gateway.call(anthropic(user("Search")), {"role": "assistant", "content": [use]})
        echo = dict(use, input={"opts": {"b": 2, "a": 1}, "limit": 5, "q": "x"})
        result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"}]}
        later = gateway.call(anthropic(user("Search"), {"role": "assistant", "content": [echo]}, result))
        self.assertEqual((later.session_id, later.how), (first.session_id, CONTINUED))

    def test_streamed_answer_equals_the_echoed_message(self) -> None:
        """
        An answer the gateway reassembled from a stream (arguments in
        pieces) is the message the client sends back.
        """
        assembler = StreamAnswer("openai")
        chunks: list[dict[str, Any]] = [
            {"role": "assistant", "content": None},
            {"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "run", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"cmd": '}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"ls -l"}'}}]},
        ]
        for delta in chunks:
            assembler.feed(ServerSentEvent("message", json.dumps({"choices": [{"index": 0, "delta": delta}]})))
        gateway = Gateway()
        first = gateway.call(chat(user("List")), assembler.result())
        echo = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "run", "arguments": '{"cmd":"ls -l"}'}}],
        }
        later = gateway.call(chat(user("List"), echo, {"role": "tool", "tool_call_id": "call_9", "content": "a b"}))
        self.assertEqual((later.session_id, later.how), (first.session_id, CONTINUED))

    def test_responses_api_previous_response_id(self) -> None:
        gateway = Gateway()
        detector = gateway.detector
        body = {"model": "m", "instructions": "Be brief.", "input": "Hi"}
        pending, first = detector.begin(history_of("openai", b"/v1/responses", body))
        output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]}]
        detector.complete(pending, {"role": "assistant", "content": "Hello", "output": output}, "resp_1")
        chained = dict(body, input=[user("More")], previous_response_id="resp_1")
        pending, second = detector.begin(history_of("openai", b"/v1/responses", chained))
        self.assertEqual((second.session_id, second.how), (first.session_id, "previous_response"))
        # the whole input sent back (store: false) continues too
        whole = dict(body, input=[user("Hi"), *copy.deepcopy(output), user("More")])
        pending, third = detector.begin(history_of("openai", b"/v1/responses", whole))
        self.assertEqual((third.session_id, third.how), (first.session_id, CONTINUED))


class CountingSessions(OrderedDict):  # type: ignore[type-arg]
    """
    The store's session dict, counting every session it hands out.
    """

    visited = 0

    def _count(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            CountingSessions.visited += 1
            yield item

    def __iter__(self) -> Iterator[Any]:
        return self._count(super().__iter__())

    def values(self) -> Any:
        return self._count(iter(super().values()))

    def items(self) -> Any:
        return self._count(iter(super().items()))

    def keys(self) -> Any:
        return self._count(iter(super().keys()))

    def get(self, key: Any, default: Any = None) -> Any:
        CountingSessions.visited += 1
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        CountingSessions.visited += 1
        return super().__getitem__(key)


class StoreCostTests(SynchronousTestCase):
    def visits(self, sessions: int, expired: int = 0) -> int:
        """
        Sessions looked at by one more conversation's five calls, in a store
        of ``sessions`` live sessions (``expired`` of them, the oldest, past
        their TTL).
        """
        gateway = Gateway(ttl=100.0)
        gateway.store._sessions = CountingSessions()  # type: ignore[assignment]
        for n in range(sessions):
            if n == expired:
                gateway.clock.advance(50)
            gateway.call(chat(user(f"conversation {n}")))
        gateway.clock.advance(60)  # the first ``expired`` are now past their TTL
        CountingSessions.visited = 0
        conversation = Conversation(gateway, "the measured one")
        for n in range(5):
            conversation.turn(f"turn {n}")
        return CountingSessions.visited

    def test_cost_does_not_depend_on_the_number_of_sessions(self) -> None:
        few, many = self.visits(10), self.visits(3000)
        self.assertEqual(few, many)
        self.assertLess(many, 40)

    def test_expiry_only_looks_at_expired_sessions(self) -> None:
        base = self.visits(3000)
        with_expired = self.visits(3000, expired=200)
        # each expired session is looked at once (to drop it), no other more
        self.assertLessEqual(with_expired - base, 200 + 2)

    def test_keys_per_session_are_bounded(self) -> None:
        gateway = Gateway()
        conversation = Conversation(gateway, "long")
        for n in range(200):
            conversation.turn(f"turn {n}")
        session = gateway.store._sessions[conversation.decisions[0].session_id]
        self.assertLessEqual(len(session.keys), 64)
        self.assertLessEqual(len(gateway.store._keys), 64 + 2)
        self.assertEqual(len(conversation.sessions), 1)

    def test_memory_store_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ISessionStore, MemorySessionStore(Clock())))


# -- known detection bugs -------------------------------------------------------------
#
# Plain pytest functions, expected to fail until llmgate/sessions is fixed
# (trial's ``todo`` does not reach pytest); trial does not collect them.


def test_opening_identical_to_an_earlier_retried_first_call() -> None:
    """
    A's first call fails and its retry gets an answer; later B opens
    identically.  Nothing is ambiguous any more (A's call was answered), yet
    B lands in A's session: the retry key outlives the retry.
    """
    gateway = Gateway()
    failed = gateway.call(chat(user("Same question")), None)
    retried = gateway.call(chat(user("Same question")), assistant("answer A"))
    assert (retried.session_id, retried.how) == (failed.session_id, RETRY)
    b = gateway.call(chat(user("Same question")), assistant("answer B"))
    assert b.session_id != failed.session_id


def test_token_counting_does_not_merge_identical_openings() -> None:
    """
    Anthropic's ``/v1/messages/count_tokens`` carries a conversation but
    never an answer: two clients that open identically and count tokens
    first must still get two sessions.
    """
    stage = SessionStage(SessionDetector(MemorySessionStore(Clock()), SessionConfig()))
    body = {"model": "claude-x", "system": "You are Claude Code.", "messages": [user("Fix the failing test")]}

    def count_tokens() -> Exchange:
        exchange = make_exchange(body, path=b"/v1/messages/count_tokens")
        exchange.provider = "anthropic"
        stage.request_received(exchange)
        exchange.response = ResponseRecord(status=200, headers=[], body=bytearray(b'{"input_tokens": 42}'))
        stage.exchange_finished(exchange)
        return exchange

    def message(text: str) -> Exchange:
        exchange = make_exchange(dict(body, max_tokens=100), path=b"/v1/messages")
        exchange.provider = "anthropic"
        stage.request_received(exchange)
        answer = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": text}]}
        exchange.response = ResponseRecord(status=200, headers=[], body=bytearray(json.dumps(answer).encode()))
        stage.exchange_finished(exchange)
        return exchange

    count_tokens()
    a = message("answer A")
    count_tokens()  # a second client, same opening
    b = message("answer B")
    assert a.session_id != b.session_id


def test_refusals_are_part_of_the_answer() -> None:
    """
    Two conversations open identically and both are refused, in other
    words: their states differ, so their next turns stay apart; and a
    client that sends the refusal back as the content continues.
    """
    gateway = Gateway()
    question = chat(user("How do I pick a lock?"))
    refusal_a = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    refusal_b = {"role": "assistant", "content": None, "refusal": "I'm unable to assist with lock picking."}
    a = gateway.call(question, refusal_a)
    b = gateway.call(question, refusal_b)
    next_b = gateway.call(chat(user("How do I pick a lock?"), refusal_b, user("Then tell me about safes")))
    assert next_b.session_id == b.session_id != a.session_id
    as_content = {"role": "assistant", "content": "I can't help with that."}
    next_a = gateway.call(chat(user("How do I pick a lock?"), as_content, user("Why not?")))
    assert next_a.session_id == a.session_id


_GEMINI_PLUGIN = '''
from twisted.plugin import IPlugin
from zope.interface import implementer
from llmgate.interfaces import IApiShape
from llmgate.providers.base import Shape
from llmgate.sessions.canonical import History, digest_reduced


def _turn(content):
    role = "assistant" if content.get("role") == "model" else "user"
    text = "".join(p.get("text", "") for p in content.get("parts", []))
    return {"role": role, "content": text}


@implementer(IPlugin, IApiShape)
class Gemini(Shape):
    name = "gemini"
    system = "gemini"
    priority = 200
    suffixes = (b":generateContent",)

    def history(self, body):
        contents = body.get("contents") if isinstance(body, dict) else None
        if not isinstance(contents, list):
            return None
        return History(
            system=digest_reduced(("system", [])),
            messages=[_turn(c) for c in contents],
            provider="openai-chat",
        )

    def answer_from_body(self, document):
        return _turn(document["candidates"][0]["content"])


gemini = Gemini()
'''


class PluginShapeTests(SynchronousTestCase):
    """
    A third-party shape's own reading of a history is the one sessions use.
    """

    def gemini(self) -> Any:
        import importlib
        import sys
        from pathlib import Path

        from llmgate.providers.registry import with_plugins

        root = Path(self.mktemp()).absolute()
        directory = root / "fake_session_plugins"
        directory.mkdir(parents=True)
        (directory / "__init__.py").write_text("")
        (directory / "gemini_shape.py").write_text(_GEMINI_PLUGIN)
        sys.path.insert(0, str(root))
        self.addCleanup(sys.path.remove, str(root))
        self.addCleanup(sys.modules.pop, "fake_session_plugins", None)
        self.addCleanup(sys.modules.pop, "fake_session_plugins.gemini_shape", None)
        shapes = with_plugins("openai", importlib.import_module("fake_session_plugins"))
        return shapes.for_path(PATH_GEMINI)

    def exchange(self, shape: Any, contents: list[Any]) -> Exchange:
        return Exchange(
            id="g",
            provider=shape.name,
            api=shape,
            request=RequestRecord(
                b"POST", PATH_GEMINI, Headers(), json.dumps({"contents": contents}).encode()
            ),
            received=0.0,
        )

    def test_a_plugin_shapes_history_labels_and_continues_a_session(self) -> None:
        shape = self.gemini()
        self.assertEqual(shape.name, "gemini")
        stage = SessionStage(SessionDetector(MemorySessionStore(Clock()), SessionConfig()))
        hello = {"role": "user", "parts": [{"text": "Hi there"}]}
        first = self.exchange(shape, [hello])
        stage.request_received(first)
        self.assertTrue(first.session_id)
        self.assertEqual(first.notes["session_how"], NEW)
        reply = {"role": "model", "parts": [{"text": "Hello!"}]}
        first.response = ResponseRecord(
            status=200, headers=[],
            body=bytearray(json.dumps({"candidates": [{"content": reply}]}).encode()),
        )
        stage.exchange_finished(first)
        second = self.exchange(shape, [hello, reply, {"role": "user", "parts": [{"text": "more"}]}])
        stage.request_received(second)
        self.assertEqual((second.session_id, second.notes["session_how"]), (first.session_id, CONTINUED))


PATH_GEMINI = b"/v1beta/models/gemini-pro:generateContent"


def codex(prompt: str, *items: Any) -> Any:
    """
    A Codex 0.171 call: its prompt as leading developer items, no instructions.
    """
    developer = {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": prompt}]}
    body = {"model": "gpt-x", "stream": True, "input": [developer, *items]}
    return history_of("openai-responses", b"/v1/responses", body)


def codex_user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def codex_answer(text: str) -> dict[str, Any]:
    from llmgate.providers.openai_responses import responses_answer

    item = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    return responses_answer([item])


class CodexPromptTests(SynchronousTestCase):
    def test_leading_developer_items_are_the_system_prompt(self) -> None:
        one = codex("You are Codex, v1.", codex_user("Fix the test"))
        two = codex("You are Codex, v2.", codex_user("Fix the test"))
        self.assertEqual(len(one.messages), 1)
        self.assertNotEqual(one.system, two.system)
        plain = history_of("openai-responses", b"/v1/responses", {"input": [codex_user("Fix the test")]})
        self.assertEqual(plain.messages, one.messages)
        self.assertNotEqual(plain.system, one.system)

    def test_a_changed_codex_prompt_takes_the_system_changed_path(self) -> None:
        from llmgate.sessions.detect import SYSTEM_CHANGED

        gateway = Gateway()
        opening = codex_user("Fix the failing test")
        answer = codex_answer("Done: the test passes.")
        first = gateway.call(codex("You are Codex, v1.", opening), answer)
        turns = [opening, *answer["output"], codex_user("Now commit it")]
        same = gateway.call(codex("You are Codex, v1.", *turns), codex_answer("Committed."))
        self.assertEqual((same.session_id, same.how), (first.session_id, CONTINUED))
        turns += [*codex_answer("Committed.")["output"], codex_user("Push it")]
        changed = gateway.call(codex("You are Codex, v2 (new tools).", *turns))
        self.assertEqual((changed.session_id, changed.how), (first.session_id, SYSTEM_CHANGED))


class SessionIdTests(SynchronousTestCase):
    """
    Session ids are unguessable labels made without a system call.
    """

    def test_ids_are_distinct_and_well_formed(self) -> None:
        from llmgate.sessions import memory

        ids = {memory.new_session_id() for _ in range(1000)}
        self.assertEqual(len(ids), 1000)
        for value in ids:
            self.assertRegex(value, r"\Asess_[0-9a-f]{24}\Z")

    def test_making_an_id_makes_no_system_call(self) -> None:
        # os.urandom releases the GIL: the reactor thread then waits for
        # whichever thread takes it.
        from llmgate.sessions import memory

        def refuse(size: int) -> bytes:
            raise AssertionError("os.urandom called per session")

        self.patch(memory.os, "urandom", refuse)
        memory.new_session_id()

    def test_a_new_process_gets_a_new_key(self) -> None:
        from llmgate.sessions.memory import _SessionIds

        ids = _SessionIds()
        first = ids()
        ids.reset()  # what a forked child runs
        self.assertNotEqual(ids(), first)
