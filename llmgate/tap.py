"""
The ``twistd llmgate`` command: its options, and the service it runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from llmgate import config as configuration
from llmgate.example import EXAMPLE_CONFIG

log = Logger()

#: Flags that set a configuration field, and the field.
FLAG_FIELDS = {
    "base-url": "llm.base_url",
    "type": "llm.type",
    "api-key": "llm.api_key",
    "port": "server.port",
    "host": "server.host",
    "listen": "server.listen",
    "log-level": "logging.level",
}


#: How the user asks for the options' list; ``python -m llmgate`` sets its own.
HELP_COMMAND = "twistd llmgate --help"


def fail(message: str, code: int = 2) -> None:
    """
    End the process with a one-line reason: a user's mistake gets no traceback.
    """
    sys.stderr.write(f"llmgate: {message}\n")
    raise SystemExit(code)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the llmgate LLM API gateway.  Prefer the LLM_API_KEY environment "
        "variable to --api-key, which other users can see in the process list."
    )
    optParameters = [
        ["config", "c", None, "YAML configuration file."],
        ["base-url", None, None, "Base URL of the upstream LLM API."],
        ["type", None, None, "Provider type: openai or anthropic."],
        ["api-key", None, None, "API key to inject into upstream requests."],
        ["port", "p", None, "Port to listen on [default: 3000]."],
        ["host", None, None, "Address to listen on [default: 127.0.0.1]."],
        ["listen", None, None, "A Twisted server endpoint; replaces --host/--port."],
        ["log-level", None, None, "debug, info, warn, error or critical."],
        ["generate-config", None, None, "Write an example config to PATH ('-': stdout) and exit."],
        ["validate-config", None, None, "Check the config file PATH and exit."],
    ]

    def parseOptions(self, options: Any = None) -> None:
        # Kept for worker processes, which are started with the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            # twistd would print its whole usage on stdout and exit 1.
            fail(f"{str(error).rstrip('.')} (see {HELP_COMMAND})")

    def overrides(self) -> dict[str, Any]:
        return {field: self[flag] for flag, field in FLAG_FIELDS.items()}

    def postOptions(self) -> None:
        if self["generate-config"]:
            generate(self["generate-config"])
            raise SystemExit(0)
        if self["validate-config"]:
            validate(self["validate-config"], self.overrides())
            raise SystemExit(0)
        try:
            self["gateway_config"] = configuration.load(
                self["config"], os.environ, self.overrides()
            )
        except configuration.ConfigError as error:
            fail(str(error))


def generate(path: str) -> None:
    if path == "-":
        sys.stdout.write(EXAMPLE_CONFIG)
        return
    if os.path.exists(path):
        fail(f"--generate-config: {path} exists; not overwriting it", 1)
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(EXAMPLE_CONFIG)
    except OSError as error:
        fail(f"--generate-config: cannot write {path}: {error.strerror}", 1)
    sys.stdout.write(f"wrote an example configuration to {path}\n")


def summary(config: configuration.GatewayConfig) -> str:
    middleware = ", ".join(m.type for m in config.middlewares if m.enabled) or "none"
    session = config.session
    sessions = (
        f"on (max {session.max_sessions}, ttl {session.session_ttl_seconds:g}s)"
        if session.enabled
        else "off"
    )
    from llmgate.routing import Router

    upstreams = "".join(
        f"  upstream {name}: {configuration._redact_url(up.base_url)} ({up.type}, key "
        f"{'configured' if up.api_key else 'from clients'})\n"
        for name, up in config.upstreams.items()
    )
    routes = "".join(f"  route {line}\n" for line in Router(config.routes).table())
    return (
        f"configuration OK: listen {config.server.endpoint()} -> "
        f"{config.llm.base_url} ({config.llm.type}, key "
        f"{'configured' if config.llm.api_key else 'from clients'}); "
        f"middleware: {middleware}; sessions {sessions}\n{upstreams}{routes}"
    )


def validate(path: str, overrides: dict[str, Any]) -> None:
    from llmgate.middleware.registry import middleware_factories

    try:
        config = configuration.load(path, os.environ, overrides)
        known = middleware_factories()
        for index, spec in enumerate(config.middlewares):
            if spec.type not in known:
                raise configuration.ConfigError(
                    f"middlewares[{index}].type: {spec.type!r} is not a known "
                    f"middleware (known: {', '.join(sorted(known)) or 'none installed'})"
                )
    except configuration.ConfigError as error:
        fail(str(error))
    sys.stdout.write(summary(config))


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the gateway service from parsed options.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    from llmgate.limits import log_open_files, raise_open_files_limit
    from llmgate.service import GatewayService, SupervisorService
    from llmgate.workers import worker_number

    config = options["gateway_config"]
    log_open_files(
        raise_open_files_limit(),
        config.server.max_concurrent,
        sum(up.max_idle_connections for up in config.upstreams.values()),
        log,
    )
    number = worker_number()
    try:
        if config.server.workers > 1 and number is None:
            return SupervisorService(config, reactor, getattr(options, "argv", []))
        return GatewayService(config, reactor, worker=number or 0, reuse_port=number is not None)
    except configuration.ConfigError as error:
        fail(str(error))
        raise  # unreachable; for type checkers
