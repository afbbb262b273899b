"""
A private ``redis-server`` for tests and benchmarks: on 127.0.0.1, on a free
port, in a temporary directory, persisting nothing (``--save ""``,
``--appendonly no``).

    server = RedisServer()      # pytest.skip()s if redis-server is missing
    server.start()              # returns once it answers PING
    server.url                  # redis://127.0.0.1:<port>/0
    server.stop(); server.start()   # a restart keeps the port
    server.pause(); server.resume() # SIGSTOP / SIGCONT: a server that hangs
    server.kill()               # SIGKILL: connections drop mid-command
    server.close()              # stops it and removes the directory

or the ``redis_server`` fixture (:func:`redis_server_fixture`).
``LLMGATE_REDIS_SERVER`` names another ``redis-server`` binary than the one
on ``PATH``.  Start and
stop block for at most a few seconds: call them from fixtures or from a test
body between reactor turns, never from code under test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator

import pytest

EXECUTABLE = "redis-server"
_MISSING = (
    "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server); "
    "the Redis session store tests need a real server"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float = 0.2) -> bool:
    """
    Whether a Redis server on 127.0.0.1:``port`` answers PING.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """
    One ``redis-server`` process, restartable on the same port.

    :raises pytest.skip.Exception: at construction, only when ``redis-server``
        is not installed; any other failure to start is an error.
    """

    def __init__(self, executable: str | None = None) -> None:
        found = executable or os.environ.get("LLMGATE_REDIS_SERVER") or shutil.which(EXECUTABLE)
        if not found:
            pytest.skip(_MISSING)
        self.executable = found
        self.directory = tempfile.mkdtemp(prefix="llmgate-redis-")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 5.0) -> None:
        """
        Start the server (on a new free port the first time, on the same port
        after a :meth:`stop`) and wait until it answers PING.
        """
        if self.process is not None:
            return
        attempts = 1 if self.port else 3
        for _ in range(attempts):
            port = self.port or _free_port()
            self._spawn(port)
            if self._wait(port, timeout):
                self.port = port
                return
            self._kill()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{port}: {self._log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """
        Stop the server (SIGTERM, then SIGKILL) and wait until it is gone.
        """
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def pause(self) -> None:
        """
        Freeze the server (SIGSTOP): connections stay open, nothing answers.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """
        Kill the server at once (SIGKILL), even a paused one: its clients see
        their connections drop in the middle of whatever they were doing.
        """
        self._kill()

    def close(self) -> None:
        if self.process is not None:
            self.resume()
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _spawn(self, port: int) -> None:
        self.process = subprocess.Popen(
            [
                self.executable,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", self.directory,
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "yes",
                "--logfile", os.path.join(self.directory, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait(self, port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            if ping(port):
                return True
            time.sleep(0.01)
        return False

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "redis.log"), encoding="utf-8", errors="replace") as f:
                return f.read()[-500:].strip() or "(empty log)"
        except OSError:
            return "(no log)"


def redis_server_fixture() -> Iterator[RedisServer]:
    """
    Body of a ``redis_server`` fixture: a started server, closed afterwards.
    """
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


redis_server = pytest.fixture(redis_server_fixture, name="redis_server")
