"""
A seeded simulator of agent traffic, with the true conversation of every
call known, to measure llmgate's session detection (docs/sessions.md).

Many clients talk at once, interleaved at random, each playing one scenario
(:data:`SCENARIOS`).  A client's next call depends on the answer the gateway
actually returned, as with a real client, so a run is a conversation with
the gateway::

    sim = Simulation(seed=1)
    upstream.reply = sim.model          # the fake model: every answer differs
    for call in sim.calls():
        sim.record(call, send(call))    # send: the Call over HTTP -> Reply
    print(table(score(sim.outcomes)))

:func:`replay` is that loop over HTTP with treq (on the Twisted reactor).

Clients behave like SDK users: they reassemble streamed answers themselves,
echo answers back in several shapes (the SDK's full message with its null
fields, a bare ``{role, content}``, text blocks, Anthropic content blocks),
re-serialise tool-call arguments with other spacing and key order, move
Anthropic ``cache_control`` breakpoints, truncate, retry, regenerate, edit
and start over.  Only what the rules in docs/sessions.md say is knowable is
asked for: the very first call of a conversation is never regenerated or
edited (such a call is, by content, a new conversation), and a first call
that failed is only retried in a conversation whose opening is its own.
:data:`EXTRA_SCENARIOS` play cases outside those guarantees; they are
measured apart (``bench/sessions_score.py --extra``).
"""

from __future__ import annotations

import copy
import json
import random
import zlib
from collections import Counter, deque
from typing import Any, Iterator, Sequence

import attrs

#: Every scenario a conversation can play; each call is tagged with its
#: conversation's scenario.
SCENARIOS = (
    "plain",
    "anthropic",
    "tools",
    "identical_openings",
    "truncation",
    "streamed",
    "retry",
    "regenerate",
    "edit",
    "reset",
    "responses_api",
)
#: The habits of real agents (Claude Code, Codex), played by
#: tests/sessionhabits.py: system prompts that change between turns, the
#: clients' own session headers, side calls beside the conversation.
HABIT_SCENARIOS = ("system_changes", "client_headers", "side_calls")
SCENARIOS += HABIT_SCENARIOS

#: Scenarios outside the documented guarantees, measured apart (see
#: bench/sessions_score.py): ``opening_after_retry``, a conversation whose
#: first call failed and was retried, then later another conversation that
#: opens identically; ``count_tokens``, Claude-Code-like clients that count
#: tokens (``/v1/messages/count_tokens``, same body, no answer) before each
#: call, opening identically.
EXTRA_SCENARIOS = ("opening_after_retry", "count_tokens")

PATHS = {
    "chat": "/v1/chat/completions",
    "messages": "/v1/messages",
    "responses": "/v1/responses",
    "count_tokens": "/v1/messages/count_tokens",
}

#: Openers of a fresh start; each holds one of the default reset phrases.
RESET_OPENERS = (
    "Let's start over: ",
    "New chat: ",
    "Forget everything above. ",
    "OK, new conversation. ",
)

WORDS = (
    "the parser keeps a buffer of pending lines and flushes it when the "
    "connection drains; retries back off exponentially with jitter while "
    "the cache is warmed from the index so latency stays flat under load "
    "because every request reuses pooled sockets and bounded queues "
    "naïve café résumé über façade — 東京 データ ✓ configuration module "
    "function handler schema migration timeout deadline token budget"
).split()

TASKS = (
    "Refactor the retry logic in the HTTP client so it honours Retry-After.",
    "Write a SQL query that lists the ten customers with the largest orders last month.",
    "Explain why my asyncio task never finishes when the socket closes.",
    "Summarise the attached design document in five bullet points.",
    "Find the bug in this binary search: it loops forever on two elements.",
    "Translate the release notes into French, keeping the code blocks.",
    "Plan a database migration that splits the users table in two.",
    "Review this pull request for thread-safety problems.",
    "Draft an email to the team about the on-call rotation change.",
    "Why does my Dockerfile rebuild every layer on each commit?",
    "Design a rate limiter for a multi-tenant API gateway.",
    "Convert this callback-based code to async/await.",
)

FOLLOW_UPS = (
    "continue",
    "Thanks. Can you make it shorter?",
    "ok, go on",
    "What about the edge case where the input is empty?",
    "Can you add tests for that?",
    "Great, now explain the trade-offs.",
    "Show me the final version.",
    "Why?",
)

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a senior Python engineer. Answer with code first, prose second.",
    "You are Claude Code, an agentic coding assistant working in the user's repository.",
    "You are a terse SQL expert. Only output SQL unless asked otherwise.",
    "You are a support agent for ACME Cloud. Be polite and precise.",
)

TOOLS = {
    "read_file": {
        "description": "Read a file of the repository.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}},
            "required": ["path"],
        },
    },
    "search": {
        "description": "Search the repository.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "options": {"type": "object"}},
            "required": ["query"],
        },
    },
    "run_tests": {
        "description": "Run a test file.",
        "parameters": {
            "type": "object",
            "properties": {"target": {"type": "string"}, "verbose": {"type": "boolean"}, "env": {"type": "object"}},
            "required": ["target"],
        },
    },
}


class SimulationError(Exception):
    """
    The run itself went wrong (a call that should have succeeded failed, a
    reply was not recorded): not a detection mistake.
    """


@attrs.define(eq=False)
class Call:
    """
    One call a client makes.

    :ivar conversation_id: the truth: which conversation the call belongs to.
    :ivar scenario: the scenario its conversation plays.
    :ivar provider: ``openai`` or ``anthropic``: the gateway it goes to.
    :ivar path: where it is posted.
    :ivar fail: the call is meant to fail (an upstream 500, a stream cut
        short, or the client giving up after ``client_timeout`` seconds: see
        ``fail_mode``); the client then resends it.
    :ivar note: what the client means by it (``first``, ``continue``,
        ``tools``, ``retry``, ``regenerate``, ``edit``, ``edit_back``,
        ``reset``, ``truncated``), for diagnostics.
    """

    conversation_id: str
    scenario: str
    provider: str
    path: str
    body: dict[str, Any]
    stream: bool
    headers: dict[str, str]
    fail: bool = False
    fail_mode: str | None = None
    client_timeout: float | None = None
    note: str = ""
    index: int = -1
    client: Any = attrs.field(default=None, repr=False)


@attrs.define
class Reply:
    """
    What came back for a call: status None when nothing did (the client
    gave up); header names lower-cased.
    """

    status: int | None
    headers: dict[str, str] = attrs.field(factory=dict)
    body: bytes = b""

    @property
    def session_id(self) -> str | None:
        return self.headers.get("x-llmgate-session-id")


@attrs.define
class Outcome:
    call: Call
    session_id: str | None
    status: int | None


# -- reading answers as the SDKs do --------------------------------------------------


def parse_sse(body: bytes) -> list[tuple[str, str]]:
    """
    ``(event, data)`` pairs of a Server-Sent Events body (small, client-side;
    independent of the gateway's parser on purpose).
    """
    events = []
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    for block in text.split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((name, "\n".join(data)))
    return events


def read_chat(reply: Reply, stream: bool) -> dict[str, Any] | None:
    """
    An OpenAI chat answer as the SDK's ``ChatCompletionMessage.model_dump()``
    gives it (null fields included), reassembled from the stream if one.
    """
    if reply.status != 200:
        return None
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "tool_calls": None,
    }
    if not stream:
        document = json.loads(reply.body)
        got = document["choices"][0]["message"]
        message.update({k: v for k, v in got.items() if k in message})
        return message
    calls: dict[int, dict[str, Any]] = {}
    done = False
    for _, data in parse_sse(reply.body):
        if data == "[DONE]":
            done = True
            continue
        document = json.loads(data)
        if "error" in document:
            return None
        for choice in document.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content") is not None:
                message["content"] = (message["content"] or "") + delta["content"]
            for piece in delta.get("tool_calls") or []:
                call = calls.setdefault(
                    piece["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if piece.get("id"):
                    call["id"] = piece["id"]
                function = piece.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
    if not done:
        return None
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message


def read_messages(reply: Reply, stream: bool) -> dict[str, Any] | None:
    """
    An Anthropic answer as the SDK's ``Message`` (content blocks as
    ``model_dump()`` gives them), reassembled from the stream if one.
    """
    if reply.status != 200:
        return None
    if not stream:
        document = json.loads(reply.body)
        blocks = document["content"]
    else:
        opened: dict[int, dict[str, Any]] = {}
        partial: dict[int, str] = {}
        stopped = False
        for name, data in parse_sse(reply.body):
            document = json.loads(data)
            kind = document.get("type", name)
            if kind == "error":
                return None
            if kind == "content_block_start":
                opened[document["index"]] = dict(document["content_block"])
            elif kind == "content_block_delta":
                block, delta = opened[document["index"]], document["delta"]
                if delta["type"] == "text_delta":
                    block["text"] = block.get("text", "") + delta["text"]
                elif delta["type"] == "input_json_delta":
                    partial[document["index"]] = partial.get(document["index"], "") + delta["partial_json"]
            elif kind == "message_stop":
                stopped = True
        if not stopped:
            return None
        for index, raw in partial.items():
            opened[index]["input"] = json.loads(raw) if raw.strip() else {}
        blocks = [opened[i] for i in sorted(opened)]
    dumped = []
    for block in blocks:
        if block["type"] == "text":
            dumped.append({"citations": None, "text": block["text"], "type": "text"})
        else:
            dumped.append({"id": block["id"], "input": block["input"], "name": block["name"], "type": "tool_use"})
    return {"role": "assistant", "content": dumped}


def read_responses(reply: Reply, stream: bool) -> dict[str, Any] | None:
    """
    A Responses API answer: ``{"id", "output"}``, from ``response.completed``
    when streamed.
    """
    if reply.status != 200:
        return None
    if not stream:
        document = json.loads(reply.body)
        return {"id": document["id"], "output": document["output"]}
    for name, data in parse_sse(reply.body):
        document = json.loads(data)
        if document.get("type") in ("error", "response.failed"):
            return None
        if document.get("type") == "response.completed":
            response = document["response"]
            return {"id": response["id"], "output": response["output"]}
    return None


# -- clients ---------------------------------------------------------------------------


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _tool_arguments(rng: random.Random, name: str) -> dict[str, Any]:
    if name == "read_file":
        start = rng.randint(1, 400)
        return {"path": f"src/{rng.choice(WORDS)}.py", "start": start, "end": start + rng.randint(5, 80)}
    if name == "search":
        return {"query": f"{rng.choice(WORDS)} {rng.choice(WORDS)}", "options": {"regex": False, "limit": rng.randint(1, 50)}}
    return {"target": f"tests/test_{rng.choice(WORDS)}.py", "verbose": True, "env": {"PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}}


def _reserialise(arguments: str, rng: random.Random) -> str:
    """
    Tool-call arguments as client code re-serialises them: other spacing,
    indentation or key order, same JSON value.
    """
    value = json.loads(arguments)
    style = rng.randrange(4)
    if style == 0:
        return json.dumps(value)
    if style == 1:
        return json.dumps(value, indent=2, ensure_ascii=False)
    if style == 2:
        return json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return json.dumps(dict(reversed(list(value.items()))), ensure_ascii=False)


class Client:
    """
    One simulated client: its conversation (the truth), its history as it
    will send it, and its plan (which call numbers fail, regenerate, edit,
    start over).

    :ivar done: successful calls made so far; the next call's number.
    """

    def __init__(
        self,
        sim: "Simulation",
        key: str,
        scenario: str,
        provider: str,
        rng: random.Random,
        script: random.Random,
        turns: int,
    ) -> None:
        self.sim = sim
        self.key = key
        self.conversation = key
        self.generation = 0
        self.scenario = scenario
        self.provider = provider
        self.rng = rng  # behaviour: stream or not, echo styles
        self.script = script  # what the user says (shared by identical openings)
        self.turns = turns
        self.done = 0
        self.answers = 0  # answers in the current conversation's history
        self.system = script.choice(SYSTEM_PROMPTS)
        self.next: Call | None = None
        #: call number -> action (regenerate, edit, edit_back, reset, reset_in_place)
        self.actions: dict[int, str] = {}
        #: call number -> failure modes the call goes through before it succeeds
        self.failures: dict[int, list[str]] = {}
        self.stream_rate = 0.0
        self.tools = False
        #: count tokens (Anthropic) before every call
        self.count_tokens = False
        #: start only once this client has had an answer
        self.after: Client | None = None
        self._retries: deque[str] = deque()
        self._counted: Call | None = None
        #: (name, value) of a session header of the client's own, on every call
        self.session_header: tuple[str, str] | None = None
        #: called before each new call is built (a habit changing the system prompt)
        self.on_prepare: Any = None
        #: with ``after``: start once that client has had this many answers
        self.after_calls = 1

    # -- what a subclass provides ------------------------------------------------------

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def path(self) -> str:
        raise NotImplementedError

    def read(self, call: Call, reply: Reply) -> Any:
        raise NotImplementedError

    def accept(self, answer: Any) -> bool:
        """
        Add ``answer`` to the history as this client sends answers back, and
        the tool results when it called tools; True when it did.
        """
        raise NotImplementedError

    def add_user(self, text: str) -> None:
        raise NotImplementedError

    def last_is_user_text(self) -> bool:
        raise NotImplementedError

    def replace_last_user(self, text: str) -> None:
        raise NotImplementedError

    def cut_back(self) -> bool:
        """
        Go back to an earlier answer (not the last): False if there is none.
        """
        return False

    def forget(self) -> None:
        raise NotImplementedError

    def truncate(self) -> bool:
        return False

    # -- the flow ---------------------------------------------------------------------------

    def user_text(self, first: bool = False) -> str:
        script = self.script
        if first:
            return f"{script.choice(TASKS)} {_words(script, 4, 14)}"
        if script.random() < 0.3:
            return script.choice(FOLLOW_UPS)
        return f"{script.choice(FOLLOW_UPS)} {_words(script, 3, 20)}"

    def start(self) -> None:
        self.add_user(self.user_text(first=True))
        self.prepare("first")

    def prepare(self, note: str) -> None:
        if self.on_prepare is not None:
            self.on_prepare(self)
        stream = self.rng.random() < self.stream_rate
        self.next = Call(
            conversation_id=self.conversation,
            scenario=self.scenario,
            provider=self.provider,
            path=self.path(),
            body=self.body_with(stream),
            stream=stream,
            headers=self.headers(),
            note=note,
            client=self,
        )
        self._retries = deque(self.failures.get(self.done, ()))
        self._arm_failure()
        self._count_first()

    def _count_first(self) -> None:
        """
        With ``count_tokens``, the next call first goes to token counting.
        """
        call = self.next
        if not self.count_tokens or call is None or call.fail or self.provider != "anthropic":
            return
        body = {k: v for k, v in call.body.items() if k not in ("max_tokens", "stream")}
        self._counted = call
        self.next = attrs.evolve(call, path=PATHS["count_tokens"], body=body, stream=False, note="count_tokens")

    def body_with(self, stream: bool) -> dict[str, Any]:
        body = self.body()
        if stream:
            body["stream"] = True
        return body

    def headers(self) -> dict[str, str]:
        own = dict([self.session_header]) if self.session_header else {}
        if self.provider == "anthropic":
            return {"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01", **own}
        return {"authorization": "Bearer sk-client", **own}

    def _arm_failure(self) -> None:
        call = self.next
        assert call is not None
        call.fail, call.fail_mode, call.client_timeout = False, None, None
        call.path = self.path()
        if not self._retries:
            return
        mode = self._retries.popleft()
        if mode == "cut" and not (call.stream and self.path() in (PATHS["chat"], PATHS["messages"])):
            mode = "error"
        call.fail, call.fail_mode = True, mode
        if mode == "error":
            call.path = "/fail" + self.path()
        elif mode == "cut":
            call.path = "/die" + self.path()
        else:  # gone: the upstream never answers, the client gives up
            call.path = "/stall"
            call.client_timeout = 0.15

    def take(self, call: Call, reply: Reply) -> None:
        if call.note == "count_tokens":
            if reply.status != 200:
                raise SimulationError(f"{call.conversation_id}: token counting failed: {reply.status}")
            self.next, self._counted = self._counted, None
            return
        answer = self.read(call, reply)
        if answer is None:
            if not call.fail:
                raise SimulationError(
                    f"{call.conversation_id} call {call.index} ({call.note}) failed: "
                    f"{reply.status} {reply.body[:300]!r}"
                )
            again = attrs.evolve(call, note="retry", index=-1)
            self.next = again
            self._arm_failure()
            return
        if call.fail:
            raise SimulationError(f"{call.conversation_id} call {call.index} should have failed ({call.fail_mode})")
        self.done += 1
        if self.done >= self.turns:
            self.next = None
            return
        action = self.actions.get(self.done)
        if action == "regenerate" and self.answers >= 1:
            # The same history again; the conversation goes on from the new answer.
            self.next = attrs.evolve(call, note="regenerate", index=-1, headers=self.headers())
            self.next.body = copy.deepcopy(call.body)
            self._retries = deque(self.failures.get(self.done, ()))
            self._arm_failure()
            self._count_first()
            return
        if action in ("edit", "edit_back") and self.answers >= 1 and self.last_is_user_text():
            if action == "edit_back" and self.cut_back():
                self.add_user(f"Actually, {self.user_text()}")
                self.prepare("edit_back")
                return
            self.replace_last_user(f"Let me rephrase: {self.user_text()}")
            self.prepare("edit")
            return
        if action == "reset":
            self.forget()
            self.generation += 1
            self.conversation = f"{self.key}.r{self.generation}"
            self.answers = 0
            self.add_user(self.script.choice(RESET_OPENERS) + self.user_text(first=True))
            self.prepare("reset")
            return
        called_tools = self.accept(answer)
        self.answers += 1
        if action == "reset_in_place" and not called_tools:
            # A short history holding an answer, and a reset phrase: the
            # conversation starts over from this call (docs/sessions.md).
            self.generation += 1
            self.conversation = f"{self.key}.r{self.generation}"
            self.add_user(self.script.choice(RESET_OPENERS) + self.user_text(first=True))
            self.prepare("reset")
            return
        if not called_tools:
            self.add_user(self.user_text())
        note = "tools" if called_tools else "continue"
        if self.truncate():
            note = "truncated"
        self.prepare(note)


class ChatClient(Client):
    """
    OpenAI chat completions (``provider="openai"``) or Anthropic messages
    (``provider="anthropic"``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[dict[str, Any]] = []
        rng = self.rng
        #: how answers are echoed: sdk, minimal, blocks, mixed (a new choice per answer)
        self.echo = rng.choice(("sdk", "minimal", "blocks", "mixed"))
        #: Anthropic: system as blocks, user turns as blocks, moving cache breakpoints
        self.system_blocks = rng.random() < 0.5
        self.user_blocks = rng.random() < 0.5
        self.cache_breakpoints = rng.random() < 0.5
        self.max_messages: int | None = None
        self.keep_first = False
        self.model = "claude-sonnet-4-5" if self.provider == "anthropic" else "gpt-4o-mini"

    def path(self) -> str:
        return PATHS["messages"] if self.provider == "anthropic" else PATHS["chat"]

    def body(self) -> dict[str, Any]:
        history = [copy.deepcopy(m) for m in self.history]
        if self.provider == "anthropic":
            if self.cache_breakpoints and history:
                last = history[-1]
                content = last["content"]
                if isinstance(content, str):
                    content = [{"type": "text", "text": content}]
                content[-1] = dict(content[-1], cache_control={"type": "ephemeral"})
                last["content"] = content
            system: Any = self.system
            if self.system_blocks:
                system = [{"type": "text", "text": self.system, "cache_control": {"type": "ephemeral"}}]
            body: dict[str, Any] = {"model": self.model, "max_tokens": 1024, "system": system, "messages": history}
            if self.tools:
                body["tools"] = [
                    {"name": name, "description": spec["description"], "input_schema": spec["parameters"]}
                    for name, spec in TOOLS.items()
                ]
            return body
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": self.system}, *history],
            "temperature": 0.7,
        }
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": name, **spec}} for name, spec in TOOLS.items()
            ]
        return body

    def body_with(self, stream: bool) -> dict[str, Any]:
        body = super().body_with(stream)
        if stream and self.provider == "openai" and self.rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        return body

    def read(self, call: Call, reply: Reply) -> Any:
        if self.provider == "anthropic":
            return read_messages(reply, call.stream)
        return read_chat(reply, call.stream)

    def add_user(self, text: str) -> None:
        content: Any = text
        if self.provider == "anthropic" and self.user_blocks:
            content = [{"type": "text", "text": text}]
        self.history.append({"role": "user", "content": content})

    def last_is_user_text(self) -> bool:
        last = self.history[-1]
        if last["role"] != "user":
            return False
        content = last["content"]
        return isinstance(content, str) or all(b.get("type") == "text" for b in content)

    def replace_last_user(self, text: str) -> None:
        self.history.pop()
        self.add_user(text)

    def cut_back(self) -> bool:
        answers = [i for i, m in enumerate(self.history) if m["role"] == "assistant"]
        # the history ends ..., answer, user: go back one or two answers more
        if len(answers) < 2:
            return False
        index = answers[-self.rng.randint(2, min(3, len(answers)))]
        if self.history[index + 1 :] and not all(
            m["role"] == "assistant" or (m["role"] == "user" and self._is_text(m)) for m in self.history[index + 1 :]
        ):
            return False  # never cut between a tool call and its result
        del self.history[index + 1 :]
        return True

    @staticmethod
    def _is_text(message: dict[str, Any]) -> bool:
        content = message["content"]
        return isinstance(content, str) or all(b.get("type") == "text" for b in content)

    def forget(self) -> None:
        self.history = []

    def accept(self, answer: Any) -> bool:
        rng = self.rng
        echo = self.echo if self.echo != "mixed" else rng.choice(("sdk", "minimal", "blocks"))
        if self.provider == "anthropic":
            blocks = answer["content"]
            if echo == "minimal":
                blocks = [
                    {"type": "text", "text": b["text"]}
                    if b["type"] == "text"
                    else {"type": "tool_use", "name": b["name"], "id": b["id"], "input": dict(reversed(list(b["input"].items())))}
                    for b in blocks
                ]
            content: Any = blocks
            if echo == "blocks" and len(blocks) == 1 and blocks[0]["type"] == "text":
                content = blocks[0]["text"]  # a single text block sent back as a string
            self.history.append({"role": "assistant", "content": content})
            uses = [b for b in answer["content"] if b["type"] == "tool_use"]
            if not uses:
                return False
            results = []
            for use in uses:
                text = f"{use['name']} ok: {_words(rng, 5, 25)}"
                result: Any = text if rng.random() < 0.5 else [{"type": "text", "text": text}]
                results.append({"type": "tool_result", "tool_use_id": use["id"], "content": result})
            self.history.append({"role": "user", "content": results})
            return True
        message = dict(answer)
        calls = message.get("tool_calls") or []
        if calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": _reserialise(c["function"]["arguments"], rng)},
                }
                for c in calls
            ]
        if echo == "minimal":
            message = {"role": "assistant", "content": message["content"]}
            if calls:
                message["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["function"]["name"], "arguments": _reserialise(c["function"]["arguments"], rng)},
                    }
                    for c in calls
                ]
        elif echo == "blocks":
            text = message["content"]
            message = {"role": "assistant", "content": [{"type": "text", "text": text}] if text else text}
            if calls:
                message["tool_calls"] = [
                    dict(c, function=dict(c["function"], arguments=_reserialise(c["function"]["arguments"], rng)))
                    for c in calls
                ]
        elif isinstance(message.get("content"), str) and rng.random() < 0.3:
            message["content"] = message["content"].strip()
        self.history.append(message)
        if not calls:
            return False
        for call in calls:
            self.history.append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": f"{call['function']['name']} ok: {_words(rng, 5, 25)}",
                }
            )
        return True

    def truncate(self) -> bool:
        limit = self.max_messages
        if limit is None or len(self.history) <= limit:
            return False
        start = 1 if self.keep_first else 0
        while len(self.history) > limit:
            # drop the oldest answer and the user turn after it, or (from the
            # start) the oldest user turn and its answer: roles keep alternating
            del self.history[start : start + 2]
        return True


class ResponsesClient(Client):
    """
    The OpenAI Responses API: either chained by ``previous_response_id`` (the
    server keeps the history) or sending its whole input each time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chained = self.rng.random() < 0.6
        self.items: list[Any] = []  # whole-input mode: the history
        self.pending: list[Any] = []  # chained mode: what the next call adds
        self.previous: str | None = None
        self.string_input = self.rng.random() < 0.5
        # Codex 0.171's way (from the key, so no draw moves the seeds): the
        # whole input each time, its prompt a leading developer item and no
        # instructions; always so where the prompt changes, to see it read.
        self.developer = not self.chained and (
            self.scenario == "system_changes" or zlib.crc32(self.key.encode()) % 2 == 0
        )

    def path(self) -> str:
        return PATHS["responses"]

    def body(self) -> dict[str, Any]:
        items = self.pending if self.chained else self.items
        given: Any = copy.deepcopy(items)
        if (
            self.string_input
            and len(given) == 1
            and isinstance(given[0], dict)
            and given[0].get("role") == "user"
            and isinstance(given[0].get("content"), str)
        ):
            given = given[0]["content"]
        body: dict[str, Any] = {"model": "gpt-4.1-mini", "instructions": self.system, "input": given}
        if self.developer:
            del body["instructions"]
            prompt = {"type": "message", "role": "developer",
                      "content": [{"type": "input_text", "text": self.system}]}
            given = [{"role": "user", "content": given}] if isinstance(given, str) else given
            body["input"] = [prompt, *given]
        if self.chained and self.previous:
            body["previous_response_id"] = self.previous
        if not self.chained:
            body["store"] = False
        if self.tools:
            body["tools"] = [{"type": "function", "name": name, **spec} for name, spec in TOOLS.items()]
        return body

    def read(self, call: Call, reply: Reply) -> Any:
        return read_responses(reply, call.stream)

    def add_user(self, text: str) -> None:
        item = {"role": "user", "content": text}
        if self.chained:
            self.pending.append(item)
        else:
            self.items.append(item)

    def last_is_user_text(self) -> bool:
        items = self.pending if self.chained else self.items
        return bool(items) and items[-1].get("role") == "user"

    def replace_last_user(self, text: str) -> None:
        (self.pending if self.chained else self.items).pop()
        self.add_user(text)

    def forget(self) -> None:
        self.items, self.pending, self.previous = [], [], None

    def accept(self, answer: Any) -> bool:
        output = answer["output"]
        calls = [item for item in output if item.get("type") == "function_call"]
        results = [
            {"type": "function_call_output", "call_id": c["call_id"], "output": f"{c['name']} ok: {_words(self.rng, 5, 20)}"}
            for c in calls
        ]
        if self.chained:
            self.previous = answer["id"]
            self.pending = results
        else:
            self.items.extend(copy.deepcopy(output))
            self.items.extend(results)
        return bool(calls)


# -- the simulation -----------------------------------------------------------------------


class Simulation:
    """
    A seeded run of interleaved conversations.

    :param conversations: clients to run (a client that starts over plays
        two conversations).
    :param concurrency: clients talking at the same time.
    :param scenarios: the scenarios to play, dealt round-robin.
    """

    def __init__(
        self,
        seed: int = 0,
        conversations: int = 48,
        turns: tuple[int, int] = (5, 15),
        concurrency: int = 12,
        scenarios: Sequence[str] = SCENARIOS,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.turns = turns
        self.outcomes: list[Outcome] = []
        self._model_rng = random.Random(seed * 7919 + 1)
        self._answers = 0
        self._awaiting: Call | None = None
        self._index = 0
        self.waiting: deque[list[Client]] = deque()
        dealt = [scenarios[i % len(scenarios)] for i in range(conversations)]
        self.rng.shuffle(dealt)
        number = 0
        identical = dealt.count("identical_openings")
        for scenario in dealt:
            if scenario == "opening_after_retry":
                # the first fails once and is retried; the second opens
                # identically once the first has its answer
                group_seed = self.rng.randrange(1 << 30)
                provider = self.rng.choice(("openai", "anthropic"))
                first = self._client(number, scenario, provider, group_seed)
                second = self._client(number + 1, scenario, provider, group_seed)
                first.failures[0] = ["error"]
                second.after = first
                self.waiting.append([first])
                self.waiting.append([second])
                number += 2
                continue
            if scenario == "count_tokens":
                group_seed = self.rng.randrange(1 << 30)
                members = []
                for _ in range(self.rng.randint(2, 3)):
                    client = self._client(number, scenario, "anthropic", group_seed)
                    client.count_tokens = True
                    client.tools = True
                    members.append(client)
                    number += 1
                self.waiting.append(members)
                continue
            if scenario in HABIT_SCENARIOS:
                from tests.sessionhabits import habit_clients

                groups = habit_clients(self, number, scenario)
                self.waiting.extend(groups)
                number += sum(len(group) for group in groups)
                continue
            if scenario != "identical_openings":
                self.waiting.append([self._client(number, scenario, None, None)])
                number += 1
                continue
            if identical <= 0:
                continue
            # a group of 2 to 4 clients with one system prompt and one
            # script, started back to back (never a group of one)
            size = min(identical, self.rng.randint(2, 4))
            if identical - size == 1:
                size += 1
            identical -= size
            group_seed = self.rng.randrange(1 << 30)
            provider = self.rng.choice(("openai", "anthropic"))
            stream_rate = self.rng.choice((0.0, 0.5))
            members = []
            for _ in range(size):
                client = self._client(number, scenario, provider, group_seed)
                client.stream_rate = stream_rate
                members.append(client)
                number += 1
            self.waiting.append(members)

    def _client(self, number: int, scenario: str, provider: str | None, group_seed: int | None) -> Client:
        rng = random.Random(self.rng.randrange(1 << 30))
        script = random.Random(group_seed if group_seed is not None else self.rng.randrange(1 << 30))
        turns = rng.randint(*self.turns)
        key = f"c{number:03d}"
        if provider is None:
            provider = {
                "plain": "openai",
                "anthropic": "anthropic",
                "responses_api": "openai",
            }.get(scenario) or rng.choice(("openai", "anthropic"))
        args = (self, key, scenario, provider, rng, script, turns)
        client: Client = ResponsesClient(*args) if scenario == "responses_api" else ChatClient(*args)
        low, high = self.turns
        if scenario == "plain":
            client.stream_rate = 0.0
            assert isinstance(client, ChatClient)
            client.echo = "mixed"
        elif scenario == "anthropic":
            client.stream_rate = 0.3
        elif scenario == "tools":
            client.tools = True
            client.stream_rate = 0.4
        elif scenario == "streamed":
            client.stream_rate = 1.0
        elif scenario == "truncation":
            assert isinstance(client, ChatClient)
            client.turns = turns = rng.randint(max(low, 8), max(high, 12))
            client.max_messages = rng.randint(5, 9)
            client.keep_first = rng.random() < 0.4
            client.stream_rate = 0.3
        elif scenario == "retry":
            client.stream_rate = 0.5
            numbers = rng.sample(range(1, turns), k=min(turns - 1, rng.randint(0, 2)))
            if rng.random() < 0.6:
                numbers.append(0)  # the first call: only the retry rule can find it
            for number_ in numbers:
                modes = [rng.choice(("error", "error", "cut", "cut", "gone"))]
                if rng.random() < 0.25:
                    modes.append(rng.choice(("error", "cut", "gone")))
                client.failures[number_] = modes
        elif scenario == "regenerate":
            client.stream_rate = 0.3
            for number_ in rng.sample(range(2, turns), k=min(turns - 2, rng.randint(1, 3))):
                client.actions[number_] = "regenerate"
        elif scenario == "edit":
            client.stream_rate = 0.3
            for number_ in rng.sample(range(2, turns), k=min(turns - 2, rng.randint(1, 3))):
                client.actions[number_] = "edit_back" if rng.random() < 0.35 else "edit"
        elif scenario == "reset":
            client.stream_rate = 0.3
            if rng.random() < 0.3:
                client.actions[1] = "reset_in_place"
            client.actions[rng.randint(3, max(3, turns - 2))] = "reset"
        elif scenario == "responses_api":
            client.stream_rate = 0.4
            client.tools = rng.random() < 0.4
            if rng.random() < 0.4:
                client.actions[rng.randint(2, turns - 1)] = "regenerate"
        return client

    # -- the fake model ---------------------------------------------------------------

    def model(self, body: dict[str, Any]) -> Any:
        """
        The fake upstream's answer to ``body`` (``AgentUpstream.reply``): a
        text that no other call gets, or tool calls when tools are offered.
        """
        rng = self._model_rng
        self._answers += 1
        text = f"Answer {self._answers}: {_words(rng, 6, 30)}."
        if rng.random() < 0.2:
            text += "\n\n"
        tools = body.get("tools")
        if not tools:
            return text
        chance = 0.3 if _ends_with_tool_result(body) else 0.7
        if rng.random() >= chance:
            return text
        names = list(TOOLS)
        calls = [
            {"name": name, "arguments": _tool_arguments(rng, name)}
            for name in rng.sample(names, k=1 if rng.random() < 0.7 else 2)
        ]
        return {"text": text if rng.random() < 0.5 else None, "tool_calls": calls}

    # -- the run ---------------------------------------------------------------------------

    def calls(self) -> Iterator[Call]:
        """
        The calls in order; each must be :meth:`record`-ed before the next
        is asked for, since it depends on the answer.
        """
        active: list[Client] = []
        forced: deque[Client] = deque()
        while True:
            while len(active) < self.concurrency and self.waiting:
                ready = [
                    group
                    for group in self.waiting
                    if all(c.after is None or c.after.done >= c.after_calls or c.after.next is None for c in group)
                ]
                if not ready:
                    break
                members = ready[0]
                self.waiting.remove(members)
                for client in members:
                    client.start()
                    active.append(client)
                if len(members) > 1:
                    forced.extend(members)  # identical openings go back to back
            if not active:
                if self.waiting:
                    raise SimulationError("clients wait for clients that never start")
                return
            client = forced.popleft() if forced else self.rng.choice(active)
            call = client.next
            assert call is not None
            call.index = self._index
            self._index += 1
            self._awaiting = call
            yield call
            if self._awaiting is not None:
                raise SimulationError("record() each call's reply before asking for the next call")
            if client.next is None:
                active.remove(client)

    def record(self, call: Call, reply: Reply) -> None:
        """
        Give the client ``reply`` (it builds its next call from it) and keep
        the session the gateway said.
        """
        if call is not self._awaiting:
            raise SimulationError("replies must be recorded in order")
        self._awaiting = None
        self.outcomes.append(Outcome(call, reply.session_id, reply.status))
        call.client.take(call, reply)


def _ends_with_tool_result(body: dict[str, Any]) -> bool:
    if isinstance(body.get("messages"), list) and body["messages"]:
        last = body["messages"][-1]
        if last.get("role") == "tool":
            return True
        content = last.get("content")
        return isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
    items = body.get("input")
    return isinstance(items, list) and bool(items) and items[-1].get("type") == "function_call_output"


# -- scoring -------------------------------------------------------------------------------


@attrs.frozen
class Score:
    """
    Pairwise agreement of true conversations and session ids over a set of
    calls' pairs.

    :ivar pairs: pairs counted.
    :ivar true_pairs: pairs in one conversation.
    :ivar labelled_pairs: pairs given one session.
    :ivar agreed: pairs in one conversation and one session.
    """

    calls: int
    pairs: int
    true_pairs: int
    labelled_pairs: int
    agreed: int

    @property
    def precision(self) -> float:
        return self.agreed / self.labelled_pairs if self.labelled_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.agreed / self.true_pairs if self.true_pairs else 1.0


def _counts(items: Sequence[tuple[str, str]]) -> tuple[int, int, int, int]:
    def pairs(counter: Counter[Any]) -> int:
        return sum(n * (n - 1) // 2 for n in counter.values())

    n = len(items)
    return (
        n * (n - 1) // 2,
        pairs(Counter(t for t, _ in items)),
        pairs(Counter(s for _, s in items)),
        pairs(Counter(items)),
    )


def score(outcomes: Sequence[Outcome]) -> dict[str, Score]:
    """
    Precision and recall over all pairs of labelled calls (``all``), and per
    scenario over the pairs where at least one call is in it.  A call that
    got no reply (the client gave up) has no label and is left out.
    """
    labelled = [o for o in outcomes if o.session_id is not None]
    items = [(o.call.conversation_id, o.session_id) for o in labelled]
    total = _counts(items)  # type: ignore[arg-type]
    scores = {"all": Score(len(items), *total)}
    for scenario in sorted({o.call.scenario for o in labelled}):
        rest = _counts([(o.call.conversation_id, o.session_id) for o in labelled if o.call.scenario != scenario])  # type: ignore[misc]
        calls = sum(1 for o in labelled if o.call.scenario == scenario)
        scores[scenario] = Score(calls, *(a - b for a, b in zip(total, rest)))
    return scores


def table(scores: dict[str, Score]) -> str:
    """
    The scores as a Markdown table.
    """
    lines = [
        "| scenario | calls | pairs | same-conversation pairs | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in scores.items():
        lines.append(
            f"| {name} | {s.calls} | {s.pairs} | {s.true_pairs} | {s.precision:.4f} | {s.recall:.4f} |"
        )
    return "\n".join(lines)


def explain(outcomes: Sequence[Outcome], max_lines: int = 200) -> str:
    """
    The conversations split over several sessions and the sessions shared
    by several conversations, call by call, to read when a score is low.
    """
    by_conversation: dict[str, list[Outcome]] = {}
    by_session: dict[str, set[str]] = {}
    for o in outcomes:
        by_conversation.setdefault(o.call.conversation_id, []).append(o)
        if o.session_id is not None:
            by_session.setdefault(o.session_id, set()).add(o.call.conversation_id)
    lines = []
    for conversation, calls in by_conversation.items():
        sessions = {o.session_id for o in calls if o.session_id is not None}
        if len(sessions) > 1:
            lines.append(f"conversation {conversation} ({calls[0].call.scenario}) split over {len(sessions)} sessions:")
            lines += [
                f"  #{o.call.index} {o.call.note:<10} fail={o.call.fail_mode} stream={o.call.stream} -> {o.session_id}"
                for o in calls
            ]
    for session, conversations in by_session.items():
        if len(conversations) > 1:
            lines.append(f"session {session} shared by {sorted(conversations)}")
    return "\n".join(lines[:max_lines]) or "no mistakes"


def coverage(outcomes: Sequence[Outcome]) -> str:
    """
    What the run did: calls by what the client meant, failures by mode.
    """
    notes = Counter(o.call.note for o in outcomes)
    failures = Counter(o.call.fail_mode for o in outcomes if o.call.fail)
    streamed = sum(1 for o in outcomes if o.call.stream)
    return (
        ", ".join(f"{k} {v}" for k, v in sorted(notes.items()))
        + f"; streamed {streamed}; failed on purpose: "
        + (", ".join(f"{k} {v}" for k, v in sorted(failures.items())) or "none")
    )


# -- mixed traffic through one gateway -----------------------------------------------------

#: The API of a call, by its path's end (a failing call's path is prefixed).
APIS = (
    ("anthropic", PATHS["count_tokens"]),
    ("anthropic", PATHS["messages"]),
    ("openai-chat", PATHS["chat"]),
    ("openai-responses", PATHS["responses"]),
)


def api_of(call: Call) -> str:
    return next(api for api, path in APIS if call.path.endswith(path))


def score_by_api(outcomes: Sequence[Outcome]) -> dict[str, Score]:
    """
    Precision and recall per API, over the pairs where at least one call is
    of that API (as :func:`score` does per scenario).
    """
    labelled = [o for o in outcomes if o.session_id is not None]
    items = [(o.call.conversation_id, o.session_id) for o in labelled]
    total = _counts(items)  # type: ignore[arg-type]
    scores = {}
    for api in sorted({api_of(o.call) for o in labelled}):
        rest = _counts(
            [(o.call.conversation_id, o.session_id) for o in labelled if api_of(o.call) != api]  # type: ignore[misc]
        )
        calls = sum(1 for o in labelled if api_of(o.call) == api)
        scores[api] = Score(calls, *(a - b for a, b in zip(total, rest)))
    return scores


def mixed_topologies(openai_url: str, anthropic_url: str) -> dict[str, dict[str, Any]]:
    """
    The two configurations one gateway serves mixed traffic with: ``routed``
    sends each API to an upstream of its own type; ``single`` has one
    ``type: openai`` upstream that answers every API (vLLM, llama.cpp,
    LiteLLM do).
    """
    return {
        "routed": {
            "upstreams": {
                "openai": {"type": "openai", "base_url": openai_url},
                "anthropic": {"type": "anthropic", "base_url": anthropic_url},
            },
            "routes": [
                {"path": "/v1/messages", "upstream": "anthropic"},
                {"path": "/fail/v1/messages", "upstream": "anthropic"},
                {"upstream": "openai"},
            ],
        },
        "single": {"llm": {"type": "openai", "base_url": openai_url}},
    }


# -- replay over HTTP ----------------------------------------------------------------------


def replay(
    sim: Simulation,
    urls: dict[str, str] | None = None,
    pool: Any = None,
    reactor: Any = None,
    route: Any = None,
) -> Any:
    """
    Send every call of ``sim`` in order with treq; a Deferred of
    ``sim.outcomes``.

    :param urls: a provider's name to its gateway's base URL.
    :param route: instead of ``urls``, a callable of the call giving the base
        URL to send it to (to spread one conversation over several gateways).
    """
    if route is None:
        assert urls is not None
        route = lambda call: urls[call.provider]  # noqa: E731
    import treq
    from twisted.internet.defer import inlineCallbacks
    from twisted.internet.task import deferLater

    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]

    @inlineCallbacks
    def send(call: Call) -> Any:
        headers = {"content-type": ["application/json"], **{k: [v] for k, v in call.headers.items()}}
        try:
            response = yield treq.request(
                "POST",
                route(call) + call.path,
                data=json.dumps(call.body).encode(),
                headers=headers,
                pool=pool,
                persistent=pool is not None,
                timeout=call.client_timeout,
            )
            body = yield treq.content(response)
        except Exception:
            if call.fail_mode != "gone":
                raise
            # as an SDK backs off before it retries
            yield deferLater(reactor, 0.02, lambda: None)
            return Reply(None)
        headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
        return Reply(response.code, headers, body)

    @inlineCallbacks
    def run() -> Any:
        for call in sim.calls():
            reply = yield send(call)
            sim.record(call, reply)
        return sim.outcomes

    return run()


__all__ = [
    "Call",
    "Reply",
    "Outcome",
    "Score",
    "Simulation",
    "SimulationError",
    "SCENARIOS",
    "api_of",
    "coverage",
    "explain",
    "mixed_topologies",
    "score_by_api",
    "replay",
    "score",
    "table",
]
