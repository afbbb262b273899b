"""
The gateway's security properties (issue 8), each checked end to end on
loopback sockets: client tokens, admin tokens, the open-relay refusal at
start, ``llm.allowed_paths``, the request limits, and a redaction run that
searches everything the gateway writes or answers for planted secrets.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import anthropic
import attrs
import openai
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import eventAsJSON, eventAsText, formatEvent, globalLogPublisher

from llmgate import config as configuration
from llmgate.logs import make_observer
from tests.rawclient import RawClient

#: Secrets planted for the redaction run; each is searched for everywhere.
KEY = "sk-canary-UPSTREAM-3f9a1c7e5b2d4680aa"
TOKEN = "gw-canary-CLIENT-0b1c2d3e4f5a6978bb"
ADMIN = "gw-canary-ADMIN-77e6d5c4b3a29180cc"
OTHER_TOKEN = "gw-second-client-token-5566778899"
WRONG = "gw-wrong-token-000000000000000000"

WAIT = 10.0
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHAT = {"model": "gpt-sec", "messages": [{"role": "user", "content": "hello"}]}
MESSAGE = {"model": "claude-sec", "max_tokens": 32, "messages": [{"role": "user", "content": "hello"}]}


def within(d: Deferred, seconds: float = WAIT) -> Deferred:
    return d.addTimeout(seconds, reactor)


def in_thread(fn: Callable[[], Any]) -> Deferred:
    return within(deferToThread(fn), WAIT * 2)


@attrs.frozen
class Answer:
    code: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return values[0] if values else None


@inlineCallbacks
def call(
    method: str, url: str, headers: dict[str, Any] | None = None, body: Any = None
) -> Any:
    """
    One request on a connection of its own; the whole answer.
    """
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    headers = dict(headers or {})
    if data is not None:
        headers.setdefault("content-type", "application/json")
    response = yield within(
        treq.request(
            method, url, headers=headers, data=data, persistent=False, allow_redirects=False
        )
    )
    content = yield within(treq.content(response))
    return Answer(
        response.code,
        {k.lower(): list(v) for k, v in response.headers.getAllRawHeaders()},
        content,
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def all_header_bytes(seen: Any) -> bytes:
    return b"\n".join(
        name + b": " + value for name, values in seen.headers.items() for value in values
    )


@inlineCallbacks
def metrics_of(gateway: Any, token: str | None = None) -> Any:
    answer = yield call("GET", gateway.url + "/metrics", bearer(token) if token else None)
    assert answer.code == 200
    return answer.json()


# -- a raw client, for what HTTP libraries will not send ---------------------------------------




def port_of(gateway: Any) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


@inlineCallbacks
def connect(gateway: Any) -> Any:
    client = RawClient()
    yield within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(gateway)), client))
    return client


@inlineCallbacks
def raw(gateway: Any, payload: bytes) -> Any:
    """
    Send ``payload`` and read until the gateway closes the connection.
    """
    client = yield connect(gateway)
    client.transport.write(payload)
    data = yield within(client.closed)
    return split(data)


def split(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ")[1]), headers, body


def assert_openai_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.code == status, answer
    assert answer.header(b"content-type") == b"application/json"
    document = answer.json()
    assert set(document) == {"error"}
    assert document["error"]["code"] == code
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]
    return document


# == who may use the gateway ==================================================================


def authed(make_gateway: Any, **extra: Any) -> Any:
    document = {"llm": {"api_key": KEY}, "auth": {"tokens": [TOKEN, OTHER_TOKEN]}}
    for name, value in extra.items():
        section, key = name.split("__")
        document.setdefault(section, {})[key] = value
    return make_gateway(document=document)


@pytest_twisted.inlineCallbacks
def test_an_unmodified_openai_sdk_works_with_the_gateway_token_as_its_key(make_gateway, upstream):
    gateway = authed(make_gateway)

    def use_sdk() -> Any:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0, timeout=WAIT) as client:
            plain = client.chat.completions.create(model="gpt-sec", messages=CHAT["messages"])
            streamed = list(
                client.chat.completions.create(model="gpt-sec", messages=CHAT["messages"], stream=True)
            )
            return plain, streamed

    plain, streamed = yield in_thread(use_sdk)
    assert plain.choices[0].message.content == "Hello from the fake upstream"
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
        "Hello from the fake upstream"
    )
    assert len(upstream.resource.seen) == 2
    for seen in upstream.resource.seen:
        # The token was replaced by the real key, and went nowhere else.
        assert seen.headers[b"authorization"] == [b"Bearer " + KEY.encode()]
        assert TOKEN.encode() not in all_header_bytes(seen) + seen.body + seen.uri


@pytest_twisted.inlineCallbacks
def test_an_unmodified_anthropic_sdk_works_with_the_gateway_token_as_its_key(make_gateway, upstream):
    gateway = authed(make_gateway, llm__type="anthropic")

    def use_sdk() -> Any:
        with anthropic.Anthropic(base_url=gateway.url, api_key=TOKEN, max_retries=0, timeout=WAIT) as client:
            plain = client.messages.create(**MESSAGE)
            with client.messages.stream(**MESSAGE) as stream:
                text = "".join(stream.text_stream)
            return plain, text

    plain, text = yield in_thread(use_sdk)
    assert plain.content[0].text == "Hello from the fake upstream"
    assert text == "Hello from the fake upstream"
    assert len(upstream.resource.seen) == 2
    for seen in upstream.resource.seen:
        assert seen.headers[b"x-api-key"] == [KEY.encode()]
        assert b"authorization" not in seen.headers
        assert TOKEN.encode() not in all_header_bytes(seen) + seen.body + seen.uri


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {TOKEN}"},
        {"authorization": f"bearer {TOKEN}"},
        {"x-api-key": TOKEN},
        {"api-key": TOKEN},
        {"authorization": f"Bearer {OTHER_TOKEN}"},
        # A wrong credential in another header does not spoil a good one.
        {"authorization": f"Bearer {TOKEN}", "x-api-key": WRONG},
    ],
    ids=["bearer", "bearer-lowercase", "x-api-key", "api-key", "second-token", "bearer-and-junk-key"],
)
@pytest_twisted.inlineCallbacks
def test_a_token_is_accepted_the_way_sdks_present_keys_and_never_forwarded(make_gateway, upstream, headers):
    gateway = authed(make_gateway)
    answer = yield call("POST", gateway.url + "/v1/chat/completions", headers, CHAT)
    assert answer.code == 200
    (seen,) = upstream.resource.seen
    assert seen.headers[b"authorization"] == [b"Bearer " + KEY.encode()]
    assert b"x-api-key" not in seen.headers and b"api-key" not in seen.headers
    for secret in (TOKEN, OTHER_TOKEN, WRONG):
        assert secret.encode() not in all_header_bytes(seen)


REFUSED_CREDENTIALS = [
    pytest.param({}, "missing gateway token", id="none"),
    pytest.param(bearer(WRONG), "invalid gateway token", id="wrong-bearer"),
    pytest.param({"x-api-key": WRONG}, "invalid gateway token", id="wrong-x-api-key"),
    pytest.param(bearer(TOKEN[:-1]), "invalid gateway token", id="token-prefix"),
    pytest.param(bearer(TOKEN + "x"), "invalid gateway token", id="token-plus-one"),
    pytest.param(bearer(TOKEN.upper()), "invalid gateway token", id="token-other-case"),
    pytest.param({"authorization": f"Basic {TOKEN}"}, "missing gateway token", id="basic-scheme"),
    pytest.param({"authorization": "Bearer "}, "missing gateway token", id="empty-bearer"),
    pytest.param(bearer(ADMIN), "invalid gateway token", id="admin-token-cannot-spend-the-key"),
]


@pytest.mark.parametrize("headers, message", REFUSED_CREDENTIALS)
@pytest_twisted.inlineCallbacks
def test_a_missing_or_wrong_token_gets_401_in_openai_shape(make_gateway, upstream, headers, message):
    gateway = authed(make_gateway, auth__admin_tokens=[ADMIN])
    answer = yield call("POST", gateway.url + "/v1/chat/completions", headers, CHAT)
    document = assert_openai_error(answer, 401, "unauthorized")
    assert document["error"]["type"] == "authentication_error"
    assert document["error"]["message"] == message
    assert answer.header(b"www-authenticate") == b"Bearer"
    assert upstream.resource.seen == []
    view = yield metrics_of(gateway, ADMIN)
    assert view["requests_refused"]["unauthorized"] == 1


@pytest_twisted.inlineCallbacks
def test_a_wrong_token_gets_401_in_anthropic_shape(make_gateway, upstream):
    gateway = authed(make_gateway, llm__type="anthropic")
    for headers in ({}, {"x-api-key": WRONG}):
        answer = yield call("POST", gateway.url + "/v1/messages", headers, MESSAGE)
        assert answer.code == 401
        document = answer.json()
        assert document["type"] == "error"
        assert document["error"]["type"] == "authentication_error"
        assert document["error"]["message"].endswith("gateway token")
    assert upstream.resource.seen == []


@pytest_twisted.inlineCallbacks
def test_the_sdks_raise_their_authentication_error_on_a_wrong_token(make_gateway, upstream):
    openai_gateway = authed(make_gateway)
    anthropic_gateway = authed(make_gateway, llm__type="anthropic")

    def use_sdks() -> tuple[Any, Any]:
        with openai.OpenAI(base_url=openai_gateway.url + "/v1", api_key=WRONG, max_retries=0, timeout=WAIT) as c:
            with pytest.raises(openai.AuthenticationError) as first:
                c.chat.completions.create(**CHAT)
        with anthropic.Anthropic(base_url=anthropic_gateway.url, api_key=WRONG, max_retries=0, timeout=WAIT) as c:
            with pytest.raises(anthropic.AuthenticationError) as second:
                c.messages.create(**MESSAGE)
        return first.value, second.value

    first, second = yield in_thread(use_sdks)
    assert first.status_code == 401 and "invalid gateway token" in str(first)
    assert second.status_code == 401 and "invalid gateway token" in str(second)
    assert upstream.resource.seen == []


@pytest_twisted.inlineCallbacks
def test_with_auth_and_no_injected_key_the_token_is_still_never_forwarded(make_gateway, upstream):
    gateway = make_gateway(document={"auth": {"tokens": [TOKEN]}})
    answer = yield call("GET", gateway.url + "/v1/models", {"x-api-key": TOKEN, **bearer(TOKEN)})
    assert answer.code == 200
    (seen,) = upstream.resource.seen
    assert b"authorization" not in seen.headers and b"x-api-key" not in seen.headers
    assert TOKEN.encode() not in all_header_bytes(seen)


@pytest_twisted.inlineCallbacks
def test_tokens_file_is_read_with_comments_and_blank_lines(make_gateway, upstream, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# client tokens\n\n  {TOKEN}  \n# {WRONG}\n{OTHER_TOKEN}\n")
    gateway = make_gateway(document={"llm": {"api_key": KEY}, "auth": {"tokens_file": str(path)}})
    for token, status in ((TOKEN, 200), (OTHER_TOKEN, 200), (WRONG, 401), ("# client tokens", 401)):
        answer = yield call("POST", gateway.url + "/v1/chat/completions", bearer(token), CHAT)
        assert answer.code == status, token
    assert len(upstream.resource.seen) == 2
    assert gateway.parts.auth.state() == {"client_tokens": 2, "refused": 2}


def test_tokens_are_kept_only_as_digests(tmp_path):
    path = tmp_path / "admins"
    path.write_text(ADMIN + "\n")
    config = configuration.parse(
        {"llm": {"api_key": KEY}, "auth": {"tokens": [TOKEN], "admin_tokens_file": str(path)}}
    )
    import hashlib

    assert config.auth.token_hashes == {hashlib.sha256(TOKEN.encode()).digest()}
    assert config.auth.admin_token_hashes == {hashlib.sha256(ADMIN.encode()).digest()}
    shown = repr(config) + json.dumps(config.redacted(), default=str)
    for secret in (TOKEN, ADMIN, KEY):
        assert secret not in shown
    assert config.redacted()["auth"] == {"client_tokens": 1, "admin_tokens": 1}
    assert config.redacted()["llm"]["api_key"] == {"configured": True}


@pytest.mark.parametrize(
    "auth, message",
    [
        ({"tokens": ["short"]}, r"^auth\.tokens: every token needs 16 characters or more$"),
        ({"tokens": "one-string-not-a-list-xxxxxx"}, r"^auth\.tokens: must be a list of non-empty strings$"),
        ({"tokens": [TOKEN, 12345678901234567890]}, r"^auth\.tokens: must be a list"),
        ({"admin_tokens": ["short-admin"]}, r"^auth\.admin_tokens: every token needs 16"),
        ({"token": [TOKEN]}, r"^auth\.token: unknown key"),
    ],
)
def test_bad_token_settings_are_config_errors_that_never_echo_a_token(auth, message):
    with pytest.raises(configuration.ConfigError, match=message) as raised:
        configuration.parse({"auth": auth})
    assert TOKEN not in str(raised.value)
    assert "one-string-not-a-list" not in str(raised.value)


def test_a_short_token_in_a_tokens_file_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN}\nshort-secret\n")
    with pytest.raises(configuration.ConfigError, match=r"^auth\.tokens_file: ") as raised:
        configuration.parse({"auth": {"tokens_file": str(path)}})
    assert "short-secret" not in str(raised.value) and TOKEN not in str(raised.value)


ADMIN_PATHS = ["/config", "/metrics", "/metrics?format=prometheus"]


@pytest.mark.parametrize("tokens_in", ["inline", "file"])
@pytest_twisted.inlineCallbacks
def test_admin_endpoints_need_an_admin_token_and_health_stays_open(make_gateway, upstream, tmp_path, tokens_in):
    auth: dict[str, Any] = {"tokens": [TOKEN]}
    if tokens_in == "inline":
        auth["admin_tokens"] = [ADMIN]
    else:
        (tmp_path / "admins").write_text(f"# operators\n{ADMIN}\n")
        auth["admin_tokens_file"] = str(tmp_path / "admins")
    gateway = make_gateway(document={"llm": {"api_key": KEY}, "auth": auth})
    refused = 0
    for path in ADMIN_PATHS:
        for headers in ({}, bearer(TOKEN), {"x-api-key": TOKEN}, bearer(WRONG)):
            answer = yield call("GET", gateway.url + path, headers)
            assert_openai_error(answer, 401, "unauthorized")
            assert answer.header(b"www-authenticate") == b"Bearer"
            refused += 1
        for headers in (bearer(ADMIN), {"x-api-key": ADMIN}):
            answer = yield call("GET", gateway.url + path, headers)
            assert answer.code == 200, path
    health = yield call("GET", gateway.url + "/health")
    assert health.code == 200 and health.json()["status"] == "healthy"
    view = yield metrics_of(gateway, ADMIN)
    assert view["requests_refused"]["unauthorized_admin"] == refused
    assert upstream.resource.seen == []


# == start-up refusal of an open relay ========================================================


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "10.1.2.3", "gateway.example"])
def test_an_injected_key_on_a_public_host_without_auth_is_refused_naming_server_host(host):
    with pytest.raises(configuration.ConfigError, match=r"^server\.host: ") as raised:
        configuration.parse({"server": {"host": host}, "llm": {"api_key": KEY}})
    message = str(raised.value)
    assert repr(host) in message and "open relay" in message
    assert "server.allow_open_relay" in message and "auth.tokens" in message
    assert KEY not in message


@pytest.mark.parametrize("listen", ["tcp:3000", "tcp:port=3000:interface=0.0.0.0", "tcp6:port=3000"])
def test_an_injected_key_on_a_public_listen_endpoint_without_auth_is_refused(listen):
    with pytest.raises(configuration.ConfigError, match=r"^server\.listen: .*open relay"):
        configuration.parse({"server": {"listen": listen}, "llm": {"api_key": KEY}})


@pytest.mark.parametrize(
    "server",
    [
        {"host": "127.0.0.1"},
        {"host": "127.3.2.1"},
        {"host": "::1"},
        {"host": "localhost"},
        {"listen": "tcp:port=3000:interface=127.0.0.1"},
        {"listen": "unix:/run/llmgate/gateway.sock"},
        {"listen": "systemd:domain=INET:index=0"},
    ],
)
def test_loopback_listeners_with_an_injected_key_need_no_auth(server):
    configuration.parse({"server": server, "llm": {"api_key": KEY}})


@pytest.mark.parametrize(
    "document",
    [
        {"server": {"host": "0.0.0.0"}, "llm": {"api_key": KEY}, "auth": {"tokens": [TOKEN]}},
        {"server": {"host": "0.0.0.0", "allow_open_relay": True}, "llm": {"api_key": KEY}},
        {"server": {"host": "0.0.0.0"}},  # no injected key: clients bring their own
    ],
    ids=["with-auth", "allow-open-relay", "no-injected-key"],
)
def test_a_public_host_is_accepted_with_auth_on_purpose_or_without_a_key(document):
    configuration.parse(document)


def test_a_repeated_interface_cannot_sneak_a_public_listener_past_the_refusal():
    with pytest.raises(configuration.ConfigError):
        configuration.parse(
            {
                "server": {"listen": "tcp:port=3000:interface=127.0.0.1:interface=0.0.0.0"},
                "llm": {"api_key": KEY},
            }
        )


def test_an_escaped_ipv6_loopback_listener_is_accepted():
    configuration.parse(
        {"server": {"listen": r"tcp6:port=3000:interface=\:\:1"}, "llm": {"api_key": KEY}}
    )


def _clean_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LLM_", "LOG_LEVEL", "NOTIFY_SOCKET", "LLMGATE_"))
    }


def _twistd(tmp_path: Any, document: dict[str, Any], *extra: str) -> list[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return [TWISTD, "-n", "--pidfile=", "llmgate", "--config", str(path), *extra]


def test_twistd_refuses_an_open_relay_with_one_line_and_a_failing_status(tmp_path):
    # 192.0.2.10 (TEST-NET-1) is never a local address: were the refusal
    # missing, the bind would fail too, and the message check would catch it.
    document = {
        "server": {"host": "192.0.2.10", "port": 0},
        "llm": {"base_url": "http://127.0.0.1:9", "api_key": KEY},
        "session": {"enabled": False},
    }
    result = subprocess.run(
        _twistd(tmp_path, document),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=_clean_environment(),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llmgate: server.host: '192.0.2.10'"), lines
    assert "open relay" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert KEY not in result.stdout + result.stderr


def test_twistd_validates_a_public_host_with_auth_without_listening(tmp_path):
    document = {
        "server": {"host": "0.0.0.0", "port": 0},
        "llm": {"base_url": "http://127.0.0.1:9", "api_key": KEY},
        "auth": {"tokens": [TOKEN]},
        "session": {"enabled": False},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(document))
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "llmgate", "--validate-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=_clean_environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration OK")
    assert KEY not in result.stdout and TOKEN not in result.stdout


def test_twistd_starts_with_allow_open_relay_and_logs_a_warning(tmp_path):
    """
    The real daemon: it starts, says at start that anyone who reaches it
    spends the key, and stops cleanly on SIGTERM.  (It listens on
    127.0.0.1: these tests never listen beyond loopback; the warning does
    not depend on the host.)
    """
    document = {
        "server": {"host": "127.0.0.1", "port": 0, "allow_open_relay": True},
        "llm": {"base_url": "http://127.0.0.1:9", "api_key": KEY},
        "session": {"enabled": False},
    }
    process = subprocess.Popen(
        _twistd(tmp_path, document),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=_clean_environment(),
    )
    output = b""
    try:
        deadline = time.monotonic() + 30
        while b"listening on" not in output:
            left = deadline - time.monotonic()
            assert left > 0, output.decode(errors="replace")
            ready, _, _ = select.select([process.stdout], [], [], left)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                assert chunk, output.decode(errors="replace")  # exited early
                output += chunk
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        output += rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    text = output.decode(errors="replace")
    warnings = [line for line in text.splitlines() if "allow_open_relay" in line]
    assert len(warnings) == 1, text
    assert "spends the injected key" in warnings[0]
    assert "warn" in warnings[0].lower()
    assert process.returncode == 0, text
    assert KEY not in text


# == allowed paths =================================================================================


@pytest_twisted.inlineCallbacks
def test_allowed_paths_refuses_other_paths_with_403_before_forwarding(make_gateway, upstream):
    gateway = make_gateway(
        llm__api_key=KEY, llm__allowed_paths=["/v1/chat/completions", "/v1/models"]
    )
    for method, path in (
        ("GET", "/v1/files"),
        ("POST", "/v1/embeddings"),
        ("DELETE", "/v1/organization/api_keys/key_1"),
        ("GET", "/admin"),
        ("GET", "/V1/models"),
        ("GET", "/"),
        ("POST", "/v1/chat"),
    ):
        answer = yield call(method, gateway.url + path, body=CHAT if method == "POST" else None)
        document = assert_openai_error(answer, 403, "forbidden_path")
        assert document["error"]["type"] == "permission_error"
    assert upstream.resource.seen == []
    for path in ("/v1/chat/completions", "/v1/models", "/v1/chat/completions?x=1"):
        answer = yield call("POST" if "chat" in path else "GET", gateway.url + path, body=CHAT if "chat" in path else None)
        assert answer.code == 200, path
    assert [s.uri for s in upstream.resource.seen] == [
        b"/v1/chat/completions", b"/v1/models", b"/v1/chat/completions?x=1",
    ]
    view = yield metrics_of(gateway)
    assert view["requests_refused"]["forbidden_path"] == 7
    # The gateway's own endpoints are not provider paths: still served.
    health = yield call("GET", gateway.url + "/health")
    assert health.code == 200


@pytest_twisted.inlineCallbacks
def test_allowed_paths_answers_403_in_anthropic_shape(make_gateway, upstream):
    gateway = make_gateway(llm__type="anthropic", llm__allowed_paths=["/v1/messages"])
    answer = yield call("POST", gateway.url + "/v1/complete", body=MESSAGE)
    assert answer.code == 403
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "permission_error"
    assert upstream.resource.seen == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions/../../models",
        "/v1/chat/completions/%2e%2e/%2e%2e/models",
        "/v1/chat/completions/..%2f..%2fmodels",
    ],
)
@pytest_twisted.inlineCallbacks
def test_allowed_paths_cannot_be_escaped_with_dot_segments(make_gateway, upstream, path):
    gateway = make_gateway(llm__api_key=KEY, llm__allowed_paths=["/v1/chat/completions"])
    client = yield connect(gateway)
    client.transport.write(
        b"GET %s HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n" % path.encode()
    )
    status, _, _ = split((yield within(client.closed)))
    assert status in (400, 403)
    assert upstream.resource.seen == []


# == limits ============================================================================================


@pytest_twisted.inlineCallbacks
def test_a_body_over_max_request_body_gets_413_by_length_and_by_chunks(make_gateway, upstream):
    gateway = make_gateway(server__max_request_body=1000)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
    for payload in (
        head + b"Content-Length: 1001\r\n\r\n" + b"x" * 1001,
        head + b"Transfer-Encoding: chunked\r\n\r\n" + (b"200\r\n" + b"x" * 512 + b"\r\n") * 3 + b"0\r\n\r\n",
    ):
        status, headers, body = yield raw(gateway, payload)
        assert status == 413
        assert headers[b"content-type"] == b"application/json"
        document = json.loads(body)
        assert document["error"]["code"] == "request_too_large"
        assert "1000 bytes" in document["error"]["message"]
    assert upstream.resource.seen == []
    view = yield metrics_of(gateway)
    assert view["requests_refused"]["body_too_large"] == 2
    exposition = yield call("GET", gateway.url + "/metrics?format=prometheus")
    assert b'llmgate_requests_refused_total{reason="body_too_large"} 2.0' in exposition.body
    ok = yield call("POST", gateway.url + "/v1/chat/completions", body=CHAT)
    assert ok.code == 200


@pytest_twisted.inlineCallbacks
def test_too_many_headers_or_too_large_a_head_gets_431(make_gateway, upstream):
    gateway = make_gateway(server__max_headers=10, server__max_header_bytes=2048)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    large = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 500) for i in range(5))
    for extra in (many, large):
        status, headers, body = yield raw(
            gateway, b"GET /v1/models HTTP/1.1\r\nHost: g\r\n" + extra + b"\r\n"
        )
        assert status == 431
        assert headers[b"content-type"] == b"application/json"
        assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert upstream.resource.seen == []
    view = yield metrics_of(gateway)
    assert view["requests_refused"]["headers_too_large"] == 2


@pytest_twisted.inlineCallbacks
def test_one_very_long_header_line_gets_431_too(make_gateway, upstream):
    gateway = make_gateway()
    client = yield connect(gateway)
    client.transport.write(
        b"GET /v1/models HTTP/1.1\r\nHost: g\r\nX-Long: " + b"a" * 40000 + b"\r\n\r\n"
    )
    data = yield within(client.closed)
    assert data.startswith(b"HTTP/1.1 431 ")


@inlineCallbacks
def trickle(gateway: Any, payload: bytes, every: float = 0.05) -> Any:
    """
    Send ``payload`` a byte at a time, every ``every`` seconds, until the
    gateway answers and closes; return what it sent, how long it took from
    the first byte, and how many bytes were sent by then.
    """
    client = yield connect(gateway)
    remaining = iter(payload[i : i + 1] for i in range(len(payload)))

    def send_one() -> None:
        piece = next(remaining, None)
        if piece is None or client.closed.called:
            loop.stop()
        else:
            client.transport.write(piece)

    loop = LoopingCall(send_one)
    started = reactor.seconds()
    loop.start(every)
    try:
        data = yield within(client.closed)
    finally:
        if loop.running:
            loop.stop()
    return data, reactor.seconds() - started, len(payload) - sum(1 for _ in remaining)


@pytest.mark.parametrize("part", ["head", "body"])
@pytest_twisted.inlineCallbacks
def test_a_client_trickling_its_request_past_request_timeout_gets_408(make_gateway, upstream, part):
    gateway = make_gateway(server__request_timeout=0.5)
    body = json.dumps(CHAT).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    if part == "head":
        data, took, sent = yield trickle(gateway, request + body)
        # Answered while the head was still coming: trickling did not
        # extend the deadline.
        assert sent < len(request)
    else:
        client = yield connect(gateway)
        client.transport.write(request)  # the whole head at once, then the body slowly
        yield deferLater(reactor, 0, lambda: None)
        started = reactor.seconds()
        sender = LoopingCall(lambda: client.closed.called or client.transport.write(b" "))
        sender.start(0.05)
        try:
            data = yield within(client.closed)
        finally:
            if sender.running:
                sender.stop()
        took = reactor.seconds() - started
    status, headers, content = split(data)
    assert status == 408
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(content)["error"]["code"] == "request_timeout"
    # Bytes kept coming, yet the deadline held (an extended deadline would
    # never close: ``within`` would fail); and it did not come early, which
    # no slowness of the machine can fake.
    assert took >= 0.5 * 0.9, took
    assert upstream.resource.seen == []
    view = yield metrics_of(gateway)
    assert view["requests_refused"]["request_timeout"] == 1


@pytest_twisted.inlineCallbacks
def test_beyond_max_concurrent_calls_get_503_with_retry_after(make_gateway, upstream):
    gateway = make_gateway(server__max_concurrent=2)
    # One call stalled before its answer, one stream open and trickling.
    held = []
    for path in (b"/stall", b"/slow-stream"):
        client = yield connect(gateway)
        client.transport.write(
            b"POST %s HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\n\r\n{}" % path
        )
        held.append(client)
    deadline = reactor.seconds() + WAIT
    while len(gateway.parts.forwarder.open_calls) < 2:
        assert reactor.seconds() < deadline
        yield deferLater(reactor, 0.01, lambda: None)
    answer = yield call("POST", gateway.url + "/v1/chat/completions", body=CHAT)
    document = assert_openai_error(answer, 503, "overloaded")
    assert answer.header(b"retry-after") == b"1"
    assert document["error"]["type"] == "service_unavailable"
    assert sorted(s.uri for s in upstream.resource.seen) == [b"/slow-stream", b"/stall"]
    view = yield metrics_of(gateway)
    assert view["requests_refused"]["overloaded"] == 1
    assert view["requests_in_flight"] == 2
    assert view["streams_open"] == 1
    # The held clients hang up: their calls end, and capacity comes back.
    for client in held:
        client.transport.abortConnection()
        yield within(client.closed)
    deadline = reactor.seconds() + WAIT
    while gateway.parts.forwarder.open_calls:
        assert reactor.seconds() < deadline
        yield deferLater(reactor, 0.01, lambda: None)
    answer = yield call("POST", gateway.url + "/v1/chat/completions", body=CHAT)
    assert answer.code == 200


def test_a_ca_file_without_a_certificate_is_a_config_error(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(configuration.ConfigError, match=r"^llm\.ca_file: "):
        configuration.parse({"llm": {"base_url": "https://127.0.0.1:1", "ca_file": str(path)}})


# == redaction ===========================================================================================


def _safe_repr(event: dict[str, Any]) -> str:
    """
    Every field of a log event, each repr'd on its own: a field whose repr
    raises (twisted.web's Request with a non-ASCII target) does not hide
    the others.
    """
    parts = []
    for name, value in event.items():
        try:
            parts.append(f"{name}={value!r}")
        except Exception as error:
            parts.append(f"{name}=<repr raised {type(error).__name__}>")
    return ", ".join(parts)


@attrs.define
class Haystack:
    """
    Everything searched for the planted secrets: (place, bytes).
    """

    places: list[tuple[str, bytes]] = attrs.field(factory=list)

    def add(self, place: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        self.places.append((place, data))

    def add_answer(self, place: str, answer: Answer, body: bool = True) -> None:
        for name, values in answer.headers.items():
            for value in values:
                self.add(f"{place} header {name.decode()}", name + b": " + value)
        if body:
            self.add(f"{place} body", answer.body)

    def hits(self, secret: str) -> list[str]:
        needle = secret.encode()
        return [place for place, data in self.places if needle in data]

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for place, _ in self.places:
            kind = place.split(" ")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


@pytest_twisted.inlineCallbacks
def test_no_secret_reaches_traces_logs_admin_views_errors_or_headers(make_gateway, upstream, tmp_path):
    traces = tmp_path / "traces"
    middlewares = [
        {"type": "trace", "config": {"directory": str(traces), "include_headers": True, "include_body": True}},
        {"type": "printer", "config": {"log_requests": True, "log_responses": True, "log_body": True}},
    ]
    common = {
        "auth": {"tokens": [TOKEN], "admin_tokens": [ADMIN]},
        "logging": {"level": "debug"},
        "middlewares": middlewares,
    }
    gateway = make_gateway(
        document={
            "server": {"max_request_body": 4096, "max_headers": 30},
            "llm": {"api_key": KEY, "timeout": 2},
            **json.loads(json.dumps(common)),
        }
    )
    refused_port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    closed = refused_port.getHost().port
    yield refused_port.stopListening()
    unreachable = make_gateway(
        document={"llm": {"base_url": f"http://127.0.0.1:{closed}", "api_key": KEY}, **json.loads(json.dumps(common))}
    )

    # Every log event, raw, and as the daemon's own text and JSON observers write it.
    events: list[dict[str, Any]] = []
    text_log, json_log = io.StringIO(), io.StringIO()
    observers = [
        events.append,
        make_observer(configuration.LoggingConfig(level="debug", format="text"), text_log),
        make_observer(configuration.LoggingConfig(level="debug", format="json"), json_log),
    ]
    for observer in observers:
        globalLogPublisher.addObserver(observer)
    hay = Haystack()
    try:
        url = gateway.url
        # Plain calls, both header forms, a stream, a listing.
        for headers in (bearer(TOKEN), {"x-api-key": TOKEN}):
            hay.add_answer("answer", (yield call("POST", url + "/v1/chat/completions", headers, CHAT)))
        hay.add_answer(
            "answer",
            (yield call("POST", url + "/v1/chat/completions", bearer(TOKEN), {**CHAT, "stream": True})),
        )
        hay.add_answer("answer", (yield call("GET", url + "/v1/models", bearer(TOKEN))))
        # The SDKs, as clients use them.

        def use_sdk() -> None:
            with openai.OpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0, timeout=WAIT) as client:
                client.chat.completions.create(**CHAT)
                list(client.chat.completions.create(**CHAT, stream=True))
                with pytest.raises(openai.APIStatusError):
                    client.with_options(base_url=url).post("/status-418", body={}, cast_to=object)

        yield in_thread(use_sdk)
        # Upstream errors: a status, a stream cut short, a hang-up, a silence.
        for path in ("/status-418", "/die-mid-stream", "/hang-up", "/cookie", "/stall"):
            try:
                answer = yield call("POST", url + path, bearer(TOKEN), {"model": "m"})
            except Exception as error:  # a body cut short on purpose
                hay.add(f"client-error {path}", repr(error))
            else:
                hay.add_answer("answer", answer)
        # An upstream that echoes what it got, the injected key included: the
        # gateway relays such an answer as is (docs/security.md, known limits),
        # so its body is not searched here; its headers, trace and log lines are.
        echoed = yield call("POST", url + "/echo", bearer(TOKEN), CHAT)
        assert KEY.encode() in echoed.body
        hay.add_answer("answer", echoed, body=False)
        # A refused upstream.
        hay.add_answer("answer", (yield call("POST", unreachable.url + "/v1/chat/completions", bearer(TOKEN), CHAT)))
        # Authentication failures, the right token presented the wrong way included.
        for headers in (
            {},
            bearer(WRONG),
            {"x-api-key": WRONG},
            {"authorization": f"Basic {TOKEN}"},
            bearer(ADMIN),
        ):
            hay.add_answer("error", (yield call("POST", url + "/v1/chat/completions", headers, CHAT)))
        # The admin views, refused and served, JSON and Prometheus.
        for path in ("/config", "/metrics", "/metrics?format=prometheus"):
            hay.add_answer("error", (yield call("GET", url + path, bearer(TOKEN))))
            hay.add_answer("admin", (yield call("GET", url + path, bearer(ADMIN))))
        hay.add_answer(
            "admin",
            (yield call("GET", url + "/metrics", {**bearer(ADMIN), "accept": "application/openmetrics-text"})),
        )
        hay.add_answer("admin", (yield call("GET", unreachable.url + "/config", bearer(ADMIN))))
        # Protocol errors from a client that sent its token.
        auth_line = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        for payload in (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth_line + b"Content-Length: 5000\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n" + auth_line
            + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"GET /v1/models HTTP/1.1\r\nHost: g\r\n" + auth_line + b"".join(b"X-%d: v\r\n" % i for i in range(40)) + b"\r\n",
            b"GET /v1/mod\x80els HTTP/1.1\r\nHost: g\r\n" + auth_line + b"Connection: close\r\n\r\n",
        ):
            client = yield connect(gateway)
            client.transport.write(payload)
            hay.add("raw-answer", (yield within(client.closed)))
        # Everything queued is on disk.
        for running in (gateway, unreachable):
            for middleware in running.parts.middlewares:
                if middleware.name == "trace":
                    yield within(middleware.flush())
    finally:
        for observer in observers:
            globalLogPublisher.removeObserver(observer)
            getattr(observer, "flush", lambda: None)()

    files = sorted(traces.iterdir())
    assert len(files) >= 15, files
    for path in files:
        hay.add(f"trace {path.name}", path.read_bytes())
    for line in text_log.getvalue().splitlines():
        hay.add("log-text", line)
    for line in json_log.getvalue().splitlines():
        hay.add("log-json", line)
    for event in events:
        hay.add("event formatEvent", formatEvent(event))
        hay.add("event eventAsText", eventAsText(event, includeTraceback=True))
        hay.add("event eventAsJSON", eventAsJSON(event))
        hay.add("event repr", _safe_repr(event))
    for seen in upstream.resource.seen:
        # The key goes upstream (that is its purpose); the client's tokens never do.
        hay.add("upstream-request", all_header_bytes(seen) + b"\n" + seen.uri + b"\n" + seen.body)
    assert any(b"Bearer " + KEY.encode() in data for place, data in hay.places if place == "upstream-request")

    report = {secret: hay.hits(secret) for secret in (KEY, TOKEN, ADMIN)}
    key_hits = [p for p in report[KEY] if p != "upstream-request"]
    print(f"\nredaction: searched {len(hay.places)} places {hay.counts()}; "
          f"hits: key {len(key_hits)}, token {len(report[TOKEN])}, admin {len(report[ADMIN])}")
    assert key_hits == []
    assert report[TOKEN] == []
    assert report[ADMIN] == []
    # Redacted, not missing: the trace still shows which headers there were.
    traced = json.loads(files[0].read_text())
    assert traced["request"]["headers"].get("authorization", traced["request"]["headers"].get("x-api-key")) == [
        "[redacted]"
    ]


@pytest_twisted.inlineCallbacks
def test_config_view_hides_the_password_of_the_session_store(make_gateway, upstream):
    gateway = make_gateway(
        document={
            "session": {"store": {"type": "memory", "url": "redis://:canary-redis-password@127.0.0.1:6379/0"}},
        }
    )
    answer = yield call("GET", gateway.url + "/config")
    assert answer.code == 200
    assert b"canary-redis-password" not in answer.body
    assert answer.json()["session"]["store"]["url"].startswith("redis://")


@pytest_twisted.inlineCallbacks
def test_config_view_hides_a_password_in_the_upstream_url(make_gateway, upstream):
    port = upstream.url.rsplit(":", 1)[1]
    gateway = make_gateway(llm__base_url=f"http://user:canary-base-password@127.0.0.1:{port}")
    answer = yield call("GET", gateway.url + "/config")
    assert answer.code == 200
    assert b"canary-base-password" not in answer.body


@pytest.mark.parametrize(
    "document",
    [
        {"session": {"store": {"type": "redis", "url": "http://:canary-password@h:1/0"}}},
        {"llm": {"base_url": "ftp://u:canary-password@h"}},
        {"llm": {"base_url": "http://u:canary-password@h:99999"}},
    ],
    ids=["store-url", "base-url-scheme", "base-url-port"],
)
def test_config_errors_never_echo_a_password_in_a_url(document):
    with pytest.raises(configuration.ConfigError) as raised:
        configuration.parse(document)
    assert "canary-password" not in str(raised.value)
