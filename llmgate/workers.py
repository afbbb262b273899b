"""
Several worker processes serving one port: one CPython process uses one
core.  The process started by twistd becomes a supervisor: it starts
``server.workers`` copies of itself, each listening on the same address with
``SO_REUSEPORT`` (the kernel spreads connections), restarts a worker that
dies, and on SIGTERM stops them all gracefully.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Set in a worker's environment to its number; absent in the supervisor.
WORKER_ENV = "LLMGATE_WORKER"

#: Seconds before a worker that died is started again (doubling to a cap,
#: so a worker that cannot start does not spin).
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 30.0


def worker_number(environ: Any = None) -> int | None:
    """
    This process's worker number, or None in a supervisor or single process.
    """
    value = (environ if environ is not None else os.environ).get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: "Supervisor", number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        # Workers log to stdout; pass their lines on, as they are.
        self.supervisor.output.write(data)
        self.supervisor.output.flush()
        if b"listening on" in data:
            self.supervisor.worker_ready(self.number)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self.number, reason)


class Supervisor(Service):
    """
    Start, watch and stop the worker processes.

    :param argv: the ``llmgate`` options this process was started with,
        given to each worker unchanged.
    :param on_ready: called once when every worker has said it listens.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Sequence[str],
        shutdown_timeout: float,
        on_ready: Any = None,
        output: Any = None,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.shutdown_timeout = shutdown_timeout
        self.on_ready = on_ready
        self.output = output if output is not None else sys.stdout.buffer
        self.workers: dict[int, Any] = {}
        self.protocols: dict[int, _WorkerProtocol] = {}
        self.restarts = 0
        self._delays: dict[int, float] = {}
        self._ready: set[int] = set()
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        for number in range(self.count):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        environ = {
            key: value
            for key, value in os.environ.items()
            if key not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
        }
        environ[WORKER_ENV] = str(number)
        protocol = _WorkerProtocol(self, number)
        self.protocols[number] = protocol
        self.workers[number] = self.reactor.spawnProcess(
            protocol,
            sys.executable,
            [sys.executable, "-m", "llmgate", *self.argv],
            env=environ,
        )

    def worker_ready(self, number: int) -> None:
        if number in self._ready:
            return
        self._ready.add(number)
        self._delays.pop(number, None)
        if len(self._ready) == self.count and self.on_ready is not None:
            on_ready, self.on_ready = self.on_ready, None
            on_ready()

    def worker_ended(self, number: int, reason: Failure) -> None:
        self.workers.pop(number, None)
        self._ready.discard(number)
        if self._stopping:
            return
        delay = self._delays.get(number, RESTART_DELAY)
        self._delays[number] = min(delay * 2, RESTART_DELAY_MAX)
        self.restarts += 1
        self.log.warn(
            "worker {number} ended ({reason}); restarting in {delay}s",
            number=number,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self._respawn, number)

    def _respawn(self, number: int) -> None:
        if not self._stopping and number not in self.workers:
            self._spawn(number)

    def stopService(self) -> Deferred[Any]:
        """
        SIGTERM every worker (each drains its calls), then wait; a worker
        still running after the shutdown timeout is killed.
        """
        super().stopService()
        self._stopping = True
        waiting = []
        for number, process in list(self.workers.items()):
            waiting.append(self.protocols[number].ended)
            try:
                process.signalProcess("TERM")
            except Exception:  # already gone
                pass

        def kill_stragglers() -> None:
            for process in list(self.workers.values()):
                try:
                    process.signalProcess("KILL")
                except Exception:
                    pass

        timer = self.reactor.callLater(self.shutdown_timeout + 5, kill_stragglers)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return DeferredList(waiting).addBoth(done)
