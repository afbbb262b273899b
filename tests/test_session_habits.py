"""
Sessions of real agents (issue 20): a client that rewrites its own system
prompt between turns (``system_changed``), and clients that name their
session in a header of their own (``session.client_headers``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmgate.config import ConfigError, SessionConfig, parse
from llmgate.sessions.detect import CONTINUED, HEADER, NEW, SYSTEM_CHANGED, TRUNCATED, SessionDetector
from llmgate.sessions.canonical import reduce_message
from llmgate.sessions.memory import MemorySessionStore
from llmgate.sessions.stage import SessionStage
from tests.test_sessions import Conversation, Gateway, anthropic, answered, assistant, chat, make_exchange, user


class SystemChangedTests(SynchronousTestCase):
    def conversation(self, **config: Any) -> tuple[Gateway, Conversation]:
        gateway = Gateway(**config)
        conversation = Conversation(gateway, "Fix the failing test", system="Today is 2026-12-04. Context: 1M.")
        conversation.turn("Now run it")
        return gateway, conversation

    def test_a_changed_system_prompt_continues_the_conversation(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        conversation.system = "Today is 2026-12-05."
        changed = conversation.turn("And commit")
        self.assertEqual((changed.session_id, changed.how), (session, SYSTEM_CHANGED))
        self.assertTrue(changed.fuzzy)
        self.assertEqual(gateway.counts["fuzzy_matches"], 1)
        # the new prompt's state is remembered: the next turn continues exactly
        self.assertEqual(conversation.send(), type(changed)(session, CONTINUED))

    def test_claude_code_first_call_then_continue(self) -> None:
        """
        The issue's case: the first call's system prompt says more than the
        later ones (a beta flag), in Anthropic's system blocks.
        """
        gateway = Gateway()
        opening = user("Say hello")
        first = gateway.call(anthropic(opening, system=[{"type": "text", "text": "Agent. 1M context."}]), assistant("hello"))
        later = gateway.call(anthropic(opening, assistant("hello"), user("again"), system="Agent."))
        self.assertEqual((later.session_id, later.how), (first.session_id, SYSTEM_CHANGED))

    def test_an_edit_under_a_new_system_prompt_is_still_found(self) -> None:
        gateway, conversation = self.conversation()
        session = conversation.decisions[0].session_id
        conversation.send()
        conversation.messages[-1] = user("Run it twice")
        conversation.system = "Today is 2026-12-05."
        self.assertEqual(conversation.send(), type(conversation.decisions[0])(session, SYSTEM_CHANGED))

    def test_truncation_with_a_new_system_prompt_is_lost(self) -> None:
        """
        The documented limit: one change at a time.
        """
        gateway, conversation = self.conversation()
        conversation.turn("And a title")
        conversation.turn("And a moral")
        conversation.messages = conversation.messages[2:]
        conversation.system = "Today is 2026-12-05."
        self.assertEqual(conversation.send().how, NEW)

    def test_sharing_only_a_system_prompt_never_merges(self) -> None:
        gateway = Gateway()
        one = Conversation(gateway, "Write a poem")
        one.turn("Shorter")
        two = Conversation(gateway, "Write a story")
        two.turn("Longer")
        self.assertNotEqual(one.sessions, two.sessions)
        self.assertEqual(gateway.counts[SYSTEM_CHANGED], 0)

    def test_identical_openings_answered_differently_never_merge(self) -> None:
        """
        Even under another system prompt, a history whose answers are not a
        known state's answers is a new conversation.
        """
        gateway = Gateway()
        one = Conversation(gateway, "Hello there", system="A")
        one.turn("more")
        two = Conversation(gateway, "Hello there", system="B")
        decisions = [two.turn("more"), two.turn("and more")]
        self.assertEqual(decisions[0].how, NEW)
        self.assertEqual(decisions[1].how, CONTINUED)
        self.assertEqual(len(one.sessions | two.sessions), 2)

    def test_the_first_message_must_match(self) -> None:
        """
        The same last messages after another opening (and another system
        prompt) are not this conversation.
        """
        gateway = Gateway()
        gateway.call(chat(user("opening one"), assistant("same"), user("q")), assistant("a"))
        other = gateway.call(chat(user("opening two"), assistant("same"), user("q"), assistant("a"), user("z"), system="X"))
        self.assertEqual(other.how, NEW)

    def test_exact_rules_come_first(self) -> None:
        """
        A truncation under the same system prompt stays ``truncated``; only
        what no other rule finds is ``system_changed``.
        """
        gateway, conversation = self.conversation()
        conversation.turn("And a title")
        conversation.turn("And a moral")
        conversation.messages = conversation.messages[2:]
        self.assertEqual(conversation.send().how, TRUNCATED)

    def test_fuzzy_matching_off_skips_it(self) -> None:
        gateway, conversation = self.conversation(fuzzy_matching=False)
        conversation.system = "Today is 2026-12-05."
        self.assertEqual(conversation.send().how, NEW)
        self.assertEqual(gateway.counts[SYSTEM_CHANGED], 0)


CLAUDE = b"x-claude-code-session-id"


class ClientHeaderTests(SynchronousTestCase):
    def stage(self, **config: Any) -> SessionStage:
        return SessionStage(SessionDetector(MemorySessionStore(Clock()), SessionConfig(**config)))

    def label(self, stage: SessionStage, headers: dict[bytes, bytes], body: Any = None) -> Any:
        exchange = make_exchange(body or {"model": "m", "messages": [user("Hi")]}, headers)
        stage.request_received(exchange)
        return exchange

    def test_default_headers(self) -> None:
        self.assertEqual(
            SessionConfig().client_headers[:4],
            ("x-llmgate-session-id", "x-claude-code-session-id", "session-id", "thread-id"),
        )

    def test_a_client_header_decides_namespaced_by_its_name(self) -> None:
        stage = self.stage()
        exchange = self.label(stage, {CLAUDE: b"c65221fc-8b44-4563-8ccb-a8c5af3d12c0"})
        self.assertEqual(exchange.session_id, "x-claude-code-session-id:c65221fc-8b44-4563-8ccb-a8c5af3d12c0")
        self.assertEqual(exchange.notes["session_how"], HEADER)

    def test_two_tools_with_one_id_do_not_collide(self) -> None:
        stage = self.stage()
        claude = self.label(stage, {CLAUDE: b"42"})
        codex = self.label(stage, {b"Session-Id": b"42"})
        self.assertEqual((claude.session_id, codex.session_id), ("x-claude-code-session-id:42", "session-id:42"))

    def test_the_first_listed_header_wins(self) -> None:
        stage = self.stage()
        both = self.label(stage, {b"thread-id": b"t1", b"session-id": b"s1"})
        self.assertEqual(both.session_id, "session-id:s1")
        own = self.label(stage, {b"thread-id": b"t1", b"x-llmgate-session-id": b"mine"})
        self.assertEqual(own.session_id, "mine")

    def test_a_malformed_value_falls_through_to_the_next(self) -> None:
        stage = self.stage()
        exchange = self.label(stage, {CLAUDE: b"has space", b"thread-id": b"t1"})
        self.assertEqual(exchange.session_id, "thread-id:t1")
        alone = self.label(stage, {CLAUDE: b"x" * 129})
        self.assertEqual(alone.notes["session_how"], NEW)

    def test_configured_headers_replace_the_default(self) -> None:
        stage = self.stage(client_headers=("x-my-agent-run",))
        ignored = self.label(stage, {CLAUDE: b"c1"})
        self.assertEqual(ignored.notes["session_how"], NEW)
        named = self.label(stage, {b"X-My-Agent-Run": b"r1"})
        self.assertEqual(named.session_id, "x-my-agent-run:r1")
        nothing = self.stage(client_headers=())
        self.assertEqual(self.label(nothing, {b"x-llmgate-session-id": b"a"}).notes["session_how"], NEW)

    def test_content_decides_without_a_header(self) -> None:
        """
        A call with the header remembers its state under the header's
        session, so a later call without one continues it by content.
        """
        stage = self.stage()
        first = self.label(stage, {b"thread-id": b"t9"})
        stage.exchange_finished(answered(first, "Hello!"))
        body = {"model": "m", "messages": [user("Hi"), assistant("Hello!"), user("Bye")]}
        later = self.label(stage, {}, body)
        self.assertEqual((later.session_id, later.notes["session_how"]), ("thread-id:t9", CONTINUED))

    def test_config_reads_and_checks_client_headers(self) -> None:
        config = parse({"session": {"client_headers": ["X-Run-Id", "session-id", "x-run-id"]}})
        self.assertEqual(config.session.client_headers, ("x-run-id", "session-id"))
        self.assertEqual(parse({"session": {"client_headers": []}}).session.client_headers, ())
        for bad in ("session-id", ["has space"], [1], ["a:b"]):
            with self.assertRaises(ConfigError) as caught:
                parse({"session": {"client_headers": bad}})
            self.assertIn("session.client_headers", str(caught.exception))

    def test_client_headers_but_the_gateways_own_go_upstream(self) -> None:
        from twisted.web.http_headers import Headers

        from llmgate.http.headers import outbound_request_headers

        sent = Headers(
            {
                CLAUDE: [b"c1"],
                b"session-id": [b"s1"],
                b"thread-id": [b"t1"],
                b"x-session-affinity": [b"a1"],
                b"x-llmgate-session-id": [b"mine"],
            }
        )
        upstream = outbound_request_headers(sent, None, frozenset(), {})
        self.assertEqual(
            {name.lower(): values for name, values in upstream.getAllRawHeaders()},
            {CLAUDE: [b"c1"], b"session-id": [b"s1"], b"thread-id": [b"t1"], b"x-session-affinity": [b"a1"]},
        )


class InjectedContextTests(SynchronousTestCase):
    """
    Claude Code continuing a conversation on another model renders the
    context around the user's words anew: other ``<system-reminder>``
    blocks in the first message, the environment as a system message
    between the turns.  Reminders are never part of a message; the system
    key passes over system messages.
    """

    def reminder(self, text: str) -> dict[str, str]:
        return {"type": "text", "text": f"<system-reminder>\n{text}\n</system-reminder>"}

    def test_context_rendered_anew_continues(self) -> None:
        gateway = Gateway()
        words = {"type": "text", "text": "Say hello"}
        first = gateway.call(anthropic(user([self.reminder("cwd /a, 1M context"), words])), assistant("hello"))
        again = anthropic(
            user([self.reminder("attribution"), words]),
            {"role": "system", "content": "# Environment\ncwd /a"},
            assistant("hello"),
            user("again"),
        )
        self.assertEqual(gateway.call(again), type(first)(first.session_id, SYSTEM_CHANGED))

    def test_a_message_of_reminders_only_is_an_empty_turn(self) -> None:
        reduced = reduce_message("anthropic", user([self.reminder("a file changed")]))
        self.assertEqual(reduced, ("user", []))
        self.assertEqual(reduce_message("openai", user("<system-reminder>x</system-reminder> hi ")), ("user", [("text", "hi")]))

    def test_other_words_around_one_reminder_stay_apart(self) -> None:
        gateway = Gateway()
        first = gateway.call(anthropic(user([self.reminder("ctx"), {"type": "text", "text": "Say hello"}])), assistant("hello"))
        other = gateway.call(
            anthropic(user([self.reminder("ctx"), {"type": "text", "text": "Say goodbye"}]), assistant("hello"), user("again"))
        )
        self.assertEqual(other.how, NEW)
        self.assertNotEqual(other.session_id, first.session_id)

    def test_system_messages_between_turns_are_left_out(self) -> None:
        gateway = Gateway()
        first = gateway.call(chat(user("Hi")), assistant("Hello!"))
        later = chat(user("Hi"), {"role": "developer", "content": "date: today"}, assistant("Hello!"), user("more"))
        self.assertEqual(gateway.call(later), type(first)(first.session_id, SYSTEM_CHANGED))
        # and the new layout is the state to continue, exactly
        again = chat(user("Hi"), {"role": "developer", "content": "date: today"}, assistant("Hello!"), user("more"),
                     assistant("answer number 1"), user("and more"))
        self.assertEqual(gateway.call(again).how, CONTINUED)
