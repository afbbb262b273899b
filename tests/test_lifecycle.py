"""
The daemon's life as an operator sees it, with real processes: socket
activation and sd_notify as systemd does them, a graceful SIGTERM that lets
a stream finish and its trace be written, the SSH console, the unit files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from tests.fakeupstream import FakeUpstream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def clean_environ(**extra: str) -> dict[str, str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLM_", "LOG_LEVEL", "LISTEN_", "NOTIFY_SOCKET"))
    }
    environ.update(extra)
    return environ


def write_config(directory: str, document: dict) -> str:
    path = os.path.join(directory, "gateway.yaml")
    with open(path, "w") as handle:
        json.dump(document, handle)  # JSON is YAML
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Notifications:
    """
    A datagram socket standing in for systemd's ``NOTIFY_SOCKET``.
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(30)

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


def test_socket_activation_and_sd_notify(tmp_path) -> None:
    """
    Like systemd: a listening socket passed as fd 3 with LISTEN_FDS and
    LISTEN_PID, READY=1 once serving, STOPPING=1 on SIGTERM, exit 0.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    notifications = Notifications(str(tmp_path))
    config = write_config(str(tmp_path), {"middlewares": []})

    # As systemd does: the socket as fd 3, LISTEN_PID the daemon's own pid
    # (the shim execs twistd, so its pid is the daemon's).
    shim = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", shim, str(listener.fileno()), TWISTD, "--nodaemon",
         "--pidfile=", "llmgate", "--config", config, "--listen", "systemd:domain=INET:index=0"],
        cwd=ROOT,
        env=clean_environ(
            LISTEN_FDS="1", LISTEN_FDNAMES="llmgate.socket", NOTIFY_SOCKET=notifications.path
        ),
        pass_fds=(listener.fileno(),),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        listener.close()  # only the child holds it now
        try:
            ready = notifications.next()
        except TimeoutError:
            process.kill()
            raise AssertionError(process.communicate()[0].decode()[-2000:]) from None
        assert "READY=1" in ready
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert b'"healthy"' in answer
        process.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notifications.next()
        assert process.wait(timeout=30) == 0
    finally:
        notifications.close()
        if process.poll() is None:
            process.kill()
            process.wait()


class FirstEvent(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.first: Deferred[None] = Deferred()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.first.called and b"\n\n" in self.data:
            self.first.callback(None)

    def connectionLost(self, reason) -> None:
        self.done.callback(self.data)


@pytest_twisted.inlineCallbacks
def test_sigterm_lets_a_stream_in_flight_finish_and_writes_its_trace(tmp_path):
    upstream = FakeUpstream(reactor, gap=0.15)
    upstream_port = reactor.listenTCP(0, Site(upstream), interface="127.0.0.1")
    traces = str(tmp_path / "traces")
    port = free_port()
    config = write_config(
        str(tmp_path),
        {
            "server": {"port": port, "shutdown_timeout": 20},
            "llm": {"base_url": f"http://127.0.0.1:{upstream_port.getHost().port}"},
            "middlewares": [{"type": "trace", "config": {"directory": traces}}],
        },
    )
    process = subprocess.Popen(
        [TWISTD, "--nodaemon", "--pidfile=", "llmgate", "--config", config],
        cwd=ROOT, env=clean_environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        health = None
        while health is None and time.monotonic() < deadline:
            try:
                health = yield treq.get(f"http://127.0.0.1:{port}/health")
            except Exception:
                from twisted.internet.task import deferLater

                yield deferLater(reactor, 0.1, lambda: None)
        assert health is not None and health.code == 200
        yield health.content()
        response = yield treq.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json.dumps({"model": "m", "stream": True, "messages": []}).encode(),
            unbuffered=True,
        )
        reader = FirstEvent()
        response.deliverBody(reader)
        yield reader.first
        process.send_signal(signal.SIGTERM)
        body = yield reader.done
        assert body.rstrip().endswith(b"data: [DONE]")
        code = yield deferToThread(process.wait, 30)
        assert code == 0
        files = os.listdir(traces)
        assert len(files) == 1
        with open(os.path.join(traces, files[0])) as handle:
            trace = json.load(handle)
        assert trace["response"]["events"][-1]["data"] == "[DONE]"
        assert trace["response"]["message"]["content"] == "Hello from the fake upstream"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        yield upstream_port.stopListening()


def keypair(directory: str, name: str) -> tuple[str, str]:
    path = os.path.join(directory, name)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
        check=True, capture_output=True,
    )
    return path, path + ".pub"


def ssh(port: int, key: str, script: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ssh", "-tt", "-i", key, "-p", str(port),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no",
         "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "operator@127.0.0.1"],
        input=script.encode(), capture_output=True, timeout=60,
    )


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client installed")
def test_the_console_shows_live_state_to_a_known_key_and_refuses_others(tmp_path):
    good, good_pub = keypair(str(tmp_path), "operator")
    bad, _ = keypair(str(tmp_path), "stranger")
    port, console = free_port(), free_port()
    config = write_config(
        str(tmp_path),
        {
            "server": {"port": port},
            "llm": {"api_key": "sk-console-canary-123456"},
            "manhole": {
                "enabled": True,
                "listen": f"tcp:{console}:interface=127.0.0.1",
                "authorized_keys": good_pub,
            },
        },
    )
    process = subprocess.Popen(
        [TWISTD, "--nodaemon", "--pidfile=", "llmgate", "--config", config],
        cwd=ROOT, env=clean_environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "listening on" in line:
                break
        result = ssh(console, good, "print('answer=%d' % (len(exchanges) + 41))\nconfig['llm']['api_key']\n\x04")
        output = result.stdout.decode("utf-8", "replace")
        assert "answer=41" in output
        assert "'configured': True" in output
        assert "sk-console-canary" not in output
        refused = ssh(console, bad, "1\n\x04")
        assert refused.returncode == 255
        assert b"Permission denied" in refused.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()


def test_a_console_beyond_loopback_is_refused_at_start(tmp_path):
    _, pub = keypair(str(tmp_path), "operator")
    config = write_config(
        str(tmp_path),
        {"manhole": {"enabled": True, "listen": "tcp:2222", "authorized_keys": pub}},
    )
    result = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", "llmgate", "--config", config],
        cwd=ROOT, env=clean_environ(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "manhole.listen" in result.stderr
    assert "loopback" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_files_verify(tmp_path):
    with open(os.path.join(ROOT, "etc", "llmgate.service")) as handle:
        unit = handle.read().replace("/opt/llmgate/bin/twistd", TWISTD)
    (tmp_path / "llmgate.service").write_text(unit)
    shutil.copy(os.path.join(ROOT, "etc", "llmgate.socket"), tmp_path / "llmgate.socket")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "llmgate.socket"), str(tmp_path / "llmgate.service")],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "llmgate.service" not in result.stderr, result.stderr


__all__ = ["tempfile"]
