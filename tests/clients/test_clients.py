"""
The real command-line agents through a running gateway (``make
test-clients``): Anthropic's Claude Code and OpenAI's Codex, pinned in
tests/clients/install.sh, each run as a user runs it (a first prompt, then
two that continue the conversation, then a separate conversation) against a
fake provider on loopback.  They print the provider's answers, the turns of
one conversation share a session id and the other conversation gets another,
and ``/metrics`` counts exactly the tokens the provider reported.

Both are run twice: with the default ``session.client_headers`` (the
clients' own session headers decide) and with none (content alone decides).
The CLIs reach nothing but the loopback: their base URLs point at the
gateway, their keys are fake, telemetry and update checks are off, any
other HTTP(S) goes to a proxy address where nothing listens, and HOME is a
temporary directory.

Skipped unless ``LLMGATE_CLIENTS_BIN`` names the directory with the
``claude`` and ``codex`` commands (the Makefile sets it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.web.server import Site

from llmgate import config as configuration
from llmgate.exchange import Exchange
from llmgate.middleware import Middleware
from llmgate.pipeline import Pipeline
from llmgate.service import GatewayParts
from tests.clients.provider import Provider

BIN = os.environ.get("LLMGATE_CLIENTS_BIN", "")
pytestmark = pytest.mark.skipif(
    not (BIN and os.path.exists(os.path.join(BIN, "claude")) and os.path.exists(os.path.join(BIN, "codex"))),
    reason="the real CLIs run with `make test-clients` (LLMGATE_CLIENTS_BIN)",
)

#: Seconds one CLI run may take (they take about one).
RUN_TIMEOUT = 90
#: A proxy address where nothing listens: whatever a CLI would send
#: elsewhere than the loopback fails at once.
NOWHERE = "http://127.0.0.1:9"
_SERIAL = re.compile(r"Answer (\d+):")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@attrs.define
class Seen:
    session_id: str | None
    how: str | None
    path: bytes
    serial: int | None


class Recorder(Middleware):
    """
    What the gateway decided for every call, by the provider's answer serial.
    """

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def exchange_finished(self, exchange: Exchange) -> None:
        found = _SERIAL.search(json.dumps(exchange.answer)) if exchange.answer else None
        self.seen.append(
            Seen(
                exchange.session_id,
                exchange.notes.get("session_how"),
                exchange.request.path,
                int(found.group(1)) if found else None,
            )
        )

    def by_serial(self, serial: int) -> Seen:
        found = [s for s in self.seen if s.serial == serial]
        assert len(found) == 1, (serial, self.seen)
        [seen] = found
        return seen


@attrs.define
class Rig:
    provider: Provider
    url: str
    recorder: Recorder
    parts: GatewayParts


@pytest.fixture
def rig(request: Any) -> Iterator[Any]:
    reactor = _reactor()
    provider = Provider(reactor)
    site = Site(provider)
    site.noisy = False
    upstream = reactor.listenTCP(0, site, interface="127.0.0.1")
    ports = [upstream]
    parts_made: list[GatewayParts] = []

    def start(kind: str, client_headers: list[str] | None) -> Rig:
        session: dict[str, Any] = {}
        if client_headers is not None:
            session["client_headers"] = client_headers
        config = configuration.parse(
            {
                "llm": {"type": kind, "base_url": f"http://127.0.0.1:{upstream.getHost().port}"},
                "middlewares": [],
                "session": session,
            }
        )
        parts = GatewayParts(config, reactor)
        recorder = Recorder()
        parts.pipeline = parts.forwarder.pipeline = Pipeline([*parts.pipeline.middlewares, recorder])
        port = reactor.listenTCP(0, parts.site, interface="127.0.0.1")
        ports.append(port)
        parts_made.append(parts)
        return Rig(provider, f"http://127.0.0.1:{port.getHost().port}", recorder, parts)

    yield start
    for port in reversed(ports):
        pytest_twisted.blockon(port.stopListening())
    for parts in parts_made:
        pytest_twisted.blockon(parts.pipeline.close())
        pytest_twisted.blockon(parts.pool.closeCachedConnections())


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.done.callback(0 if reason.check(ProcessDone) else reason.value.exitCode)


@inlineCallbacks
def run(argv: list[str], env: dict[str, str], cwd: Path) -> Any:
    """
    Run a CLI to its end without blocking the reactor; its stdout on success.
    """
    reactor = _reactor()
    protocol = _Collect()
    process = reactor.spawnProcess(protocol, argv[0], argv, env=env, path=str(cwd))
    timer = reactor.callLater(RUN_TIMEOUT, process.signalProcess, "KILL")
    code = yield protocol.done
    if timer.active():
        timer.cancel()
    assert code == 0, f"{argv[1:]} exited {code}:\n{bytes(protocol.err).decode(errors='replace')[-3000:]}"
    return bytes(protocol.out).decode()


def _base_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.pathsep.join([BIN, os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "HTTP_PROXY": NOWHERE,
        "HTTPS_PROXY": NOWHERE,
        "http_proxy": NOWHERE,
        "https_proxy": NOWHERE,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "NO_UPDATE_NOTIFIER": "1",
    }


def claude(home: Path, url: str) -> tuple[dict[str, str], list[list[str]], list[str]]:
    env = _base_env(home) | {
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-ant-fake-test-key",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    first = [os.path.join(BIN, "claude"), "-p"]
    more = [*first, "--continue"]
    # The first run on another model, with the 1M-context beta: the
    # continued runs (on the default model) render the conversation's
    # context anew: other system-reminder blocks in the first message, the
    # environment as a system message between the turns.
    flagged = [*first, "--model", "claude-sonnet-4-5[1m]"]
    return env, [flagged, more, more], first


def codex(home: Path, url: str) -> tuple[dict[str, str], list[list[str]], list[str]]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    # Codex ignores OPENAI_BASE_URL: a provider of its own, on the Responses API.
    (codex_home / "config.toml").write_text(
        'model = "gpt-fake"\n'
        'model_provider = "llmgate"\n'
        'model_reasoning_effort = "low"\n'
        'model_reasoning_summary = "auto"\n'
        "check_for_update_on_startup = false\n\n"
        "[model_providers.llmgate]\n"
        'name = "llmgate"\n'
        f'base_url = "{url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "LLMGATE_TEST_KEY"\n\n'
        "[analytics]\nenabled = false\n"
    )
    env = _base_env(home) | {"CODEX_HOME": str(codex_home), "LLMGATE_TEST_KEY": "sk-fake-test-key"}
    first = [os.path.join(BIN, "codex"), "exec", "--skip-git-repo-check"]
    more = [*first, "resume", "--last"]
    return env, [first, more, more], first


CLIENTS = {"claude": ("anthropic", claude, "x-claude-code-session-id"), "codex": ("openai", codex, "session-id")}
#: How content alone decides each client's three turns.
BY_CONTENT = {"claude": ["new", "system_changed", "continued"], "codex": ["new", "continued", "continued"]}
PROMPTS = ["Say hello to the gateway.", "Now say it louder.", "And once more, quietly."]


@pytest.mark.parametrize("headers", ["client_headers", "content_only"])
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest_twisted.inlineCallbacks
def test_three_turns_one_session_and_exact_tokens(client: str, headers: str, rig: Any, tmp_path: Path) -> Any:
    kind, make, header = CLIENTS[client]
    gateway: Rig = rig(kind, None if headers == "client_headers" else [])
    project = tmp_path / "project"
    project.mkdir()
    env, turns, fresh = make(tmp_path / "home", gateway.url)

    sessions, hows = [], []
    for argv, prompt in zip(turns, PROMPTS):
        printed = yield run([*argv, prompt], env, project)
        serial = _last_serial(printed)
        answer = gateway.provider.calls[serial - 1]
        assert answer.text in printed, printed
        seen = gateway.recorder.by_serial(serial)
        sessions.append(seen.session_id)
        hows.append(seen.how)
        if headers == "client_headers":
            assert seen.how == "header"
            assert seen.session_id == f"{header}:{answer.headers[header]}"
    assert sessions[0] and len(set(sessions)) == 1, sessions

    other = yield run([*fresh, "Something else entirely."], env, project)
    other_session = gateway.recorder.by_serial(_last_serial(other)).session_id
    assert other_session and other_session != sessions[0]

    # Every call the clients made was labelled, and the provider saw the
    # clients' own headers but never the gateway's.
    assert all(s.session_id for s in gateway.recorder.seen)
    for call in gateway.provider.calls:
        assert header in call.headers and "x-llmgate-session-id" not in call.headers
    if headers == "content_only":
        assert hows == BY_CONTENT[client], hows
        assert all(s.how != "header" for s in gateway.recorder.seen)

    response = yield treq.get(gateway.url + "/metrics")
    metrics = yield response.json()
    counted = {"input": 0, "output": 0}
    for figures in metrics["tokens"].values():
        counted["input"] += figures["input"]
        counted["output"] += figures["output"]
    sent = {"input": 0, "output": 0}
    for call in gateway.provider.calls:
        if call.usage:
            sent["input"] += call.usage["input"]
            sent["output"] += call.usage["output"]
    assert counted == sent and sent["output"] > 0


def _last_serial(printed: str) -> int:
    found = _SERIAL.findall(printed)
    assert found, f"no answer printed: {printed!r}"
    return int(found[-1])
