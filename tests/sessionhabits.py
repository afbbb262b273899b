"""
The habits of real agents, for the session simulator (tests/sessionsim.py's
:data:`~tests.sessionsim.HABIT_SCENARIOS`), as seen with Claude Code and
Codex (docs/clients.md):

- ``system_changes``: the client rewrites its own system prompt between
  turns: a flag its first call carries and later ones drop (Claude Code's
  long-context beta line), a date that moves on, a model line that changes
  when the user switches models; or (Anthropic) the context it injects
  around the user's words: ``<system-reminder>`` blocks in the first
  message rendered anew, the environment moved to a system message between
  the turns (Claude Code continuing on another model).
- ``client_headers``: some conversations carry a session header of the
  client's own (``x-claude-code-session-id``, ``session-id``, ``thread-id``,
  ``x-session-affinity``...), others none; now and then two tools pick one
  value under two header names, which must not merge them.
- ``side_calls``: beside the conversation, one-call side conversations
  under a system prompt of their own: a title for the first message, a
  summary of the transcript so far.  They are conversations of their own,
  unless the client sends its session header on them too: then, by the
  client's own word, they belong to its session.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from tests.sessionsim import ChatClient, Client, ResponsesClient, _words

if TYPE_CHECKING:
    from tests.sessionsim import Simulation

#: Header names by the API their clients speak.
HEADERS = {
    "anthropic": ("x-claude-code-session-id", "x-session-affinity", "x-llmgate-session-id"),
    "openai": ("session-id", "thread-id", "x-session-affinity", "x-opencode-session"),
}

TITLE_PROMPT = "Generate a concise title (under 50 characters) for a conversation that starts with the message below."
SUMMARY_PROMPT = "Summarise the conversation so far in two sentences, for the user who comes back to it later."


def habit_clients(sim: "Simulation", number: int, scenario: str) -> list[list[Client]]:
    """
    The groups of clients that play one conversation of ``scenario``
    (each group starts together, in :attr:`Simulation.waiting` order).
    """
    client = sim._client(number, scenario, None, None)
    rng = client.rng
    if scenario != "side_calls" and rng.random() < 0.4:
        # Codex's way: the Responses API
        client = ResponsesClient(sim, client.key, scenario, "openai", rng, client.script, client.turns)
    client.stream_rate = rng.choice((0.0, 0.3, 0.6))
    if scenario == "system_changes":
        _system_changes(client, rng)
        return [[client]]
    if scenario == "client_headers":
        if rng.random() < 0.6:
            client.session_header = _session_header(sim, client, rng)
        client.tools = rng.random() < 0.3
        return [[client]]
    # side_calls
    if rng.random() < 0.5:
        client.session_header = _session_header(sim, client, rng)
    groups: list[list[Client]] = [[client]]
    for kind, after in (("title", 1), ("summary", rng.randint(2, 4))):
        side = SideClient(sim, f"{client.key}.{kind}", scenario, client.provider, random.Random(rng.random()),
                          random.Random(rng.random()), 1)
        side.main, side.kind, side.after, side.after_calls = client, kind, client, after
        side.stream_rate = 0.5
        groups.append([side])
    return groups


def _system_changes(client: Client, rng: random.Random) -> None:
    base = client.system
    kinds = ("flag", "date", "model", "context") if isinstance(client, ChatClient) and client.provider == "anthropic" else ("flag", "date", "model")
    kind = rng.choice(kinds)
    if kind == "context":
        client.on_prepare = _context_rewriter(1)
        return
    if kind == "flag":
        # The first call says more than the later ones.
        client.system = base + "\nContext window: 1M tokens (beta)."
        client.on_prepare = lambda c: setattr(c, "system", base) if c.done >= 1 else None
        return
    turns = sorted(rng.sample(range(1, max(2, client.turns)), k=min(client.turns - 1, rng.randint(1, 2))))
    if kind == "date":
        lines = [f"\nToday's date is 2026-12-{day:02d}." for day in range(4, 4 + len(turns) + 1)]
    else:
        models = ["claude-sonnet-4-5", "claude-opus-4-1", "gpt-5", "gpt-4.1"]
        rng.shuffle(models)
        lines = [f"\nYou are powered by the model {model}." for model in models[: len(turns) + 1]]
    client.system = base + lines[0]

    def change(c: Client) -> None:
        c.system = base + lines[sum(1 for t in turns if c.done >= t)]

    client.on_prepare = change


def _context_rewriter(turn: int) -> Any:
    """
    Claude Code's context around the first message: reminders before the
    user's words, rendered anew at ``turn``, when the environment also moves
    into a system message after the first message.
    """

    def rewrite(client: Any) -> None:
        first = client.history[0]
        content = first["content"]
        words = content if isinstance(content, str) else content[-1]["text"]
        if client.done == 0:
            reminders = ["<system-reminder>\nEnvironment: cwd /repo, platform linux, date 2026-12-04\n</system-reminder>",
                         "<system-reminder>\nContents of CLAUDE.md: run make test before committing.\n</system-reminder>"]
        elif client.done == turn:
            reminders = ["<system-reminder>\nAttribution: add a Co-Authored-By line to commits.\n</system-reminder>"]
            client.history.insert(1, {"role": "system", "content": "# Environment\ncwd /repo, platform linux, date 2026-12-05"})
        else:
            return
        first["content"] = [{"type": "text", "text": text} for text in reminders] + [{"type": "text", "text": words}]

    return rewrite


def _session_header(sim: "Simulation", client: Client, rng: random.Random) -> tuple[str, str]:
    """
    A header name for the client's API and a session id; about one in four
    takes the value shared by other tools under other header names.
    """
    name = rng.choice(HEADERS[client.provider])
    shared: dict[str, str] = sim.__dict__.setdefault("_shared_header_values", {})
    if rng.random() < 0.25 and name not in shared:
        shared[name] = client.key
        return name, f"0c9d3e7a-5b1f-4e2a-9c4d-{sim.seed:012d}"
    return name, "%08x-%04x-%04x-%04x-%012x" % (
        rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(48)
    )


class SideClient(ChatClient):
    """
    A one-call side conversation of ``main``: a title or a summary, under a
    system prompt of its own, with ``main``'s session header if it sends one.
    """

    main: Client
    kind: str

    def start(self) -> None:
        main = self.main
        self.provider = main.provider
        self.model = "claude-haiku-4-5" if self.provider == "anthropic" else "gpt-4.1-nano"
        self.session_header = main.session_header
        if main.session_header is not None:
            self.conversation = main.conversation
        if self.kind == "title":
            self.system = TITLE_PROMPT
            self.add_user(_first_text(main))
        else:
            self.system = SUMMARY_PROMPT
            self.add_user("Conversation:\n" + _transcript(main) + f"\n{_words(self.rng, 2, 5)}")
        self.prepare(self.kind)


def _first_text(main: Client) -> str:
    for text in _texts(main):
        return text
    return "hello"


def _transcript(main: Client) -> str:
    return "\n".join(_texts(main))


def _texts(main: Client) -> list[str]:
    if isinstance(main, ResponsesClient):
        messages: list[Any] = main.items or main.pending
    else:
        messages = getattr(main, "history", [])
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return texts
