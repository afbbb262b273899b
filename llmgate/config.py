"""
The gateway's configuration: one YAML file, environment variables and
command-line flags, merged in that order of strength and validated into
frozen value objects.

Precedence is flag > environment > file > default.  Every mistake is reported
as a :class:`ConfigError` whose message names the field and the bad value, so
the daemon can exit with one readable line instead of a traceback.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import attrs
import yaml

PROVIDER_TYPES = ("openai", "anthropic")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")

#: Keys whose values are secrets: never echoed, not even in an error.
SECRET_KEYS = frozenset({"api_key", "tokens", "password"})

#: The upstream when ``llm.base_url`` is not given, by provider type.
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
}

#: Environment variables read, and the dotted field each one sets.
ENVIRONMENT = {
    "LLM_BASE_URL": "llm.base_url",
    "LLM_TYPE": "llm.type",
    "LLM_API_KEY": "llm.api_key",
    "LOG_LEVEL": "logging.level",
}

#: OpenTelemetry's own variables: below the file's ``telemetry.otlp`` values
#: (the usual precedence of a file over the SDK's environment), and read only
#: when that section is there: they never turn telemetry on by themselves.
OTEL_ENVIRONMENT = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "endpoint",
    "OTEL_EXPORTER_OTLP_HEADERS": "headers",
    "OTEL_SERVICE_NAME": "service_name",
}

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """
    A configuration mistake, with a message fit to show the user as is.
    """


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 3000
    #: A Twisted server endpoint string; when set it replaces host and port
    #: (``systemd:domain=INET:index=0`` for socket activation, for example).
    listen: str | None = None
    max_request_body: int = 20 * 1024 * 1024
    shutdown_timeout: float = 30.0
    #: Calls in progress at most; beyond, 503 with Retry-After.  0: no limit.
    max_concurrent: int = 1024
    #: Seconds a client has to send a whole request (head and body): a
    #: client trickling bytes is cut off with 408.
    request_timeout: float = 60.0
    #: Header lines and bytes of a request head at most; beyond, 431.
    max_headers: int = 100
    max_header_bytes: int = 32768
    #: Injecting a key while listening beyond loopback without client auth
    #: makes an open relay: refused at start unless this says it is meant.
    allow_open_relay: bool = False
    #: Worker processes serving the port (SO_REUSEPORT); more than one needs
    #: a shared session store.
    workers: int = 1

    def endpoint(self) -> str:
        """
        The server endpoint description to listen on.
        """
        if self.listen:
            return self.listen
        host = self.host.replace(":", r"\:")
        return f"tcp:port={self.port}:interface={host}"


@attrs.frozen
class LLMConfig:
    base_url: str = "https://api.openai.com"
    type: str = "openai"
    api_key: str | None = attrs.field(default=None, repr=False)
    #: Seconds to wait for the upstream's response headers.
    timeout: float = 60.0
    #: Seconds a stream may stay silent between two chunks.
    idle_timeout: float = 300.0
    #: Header that carries an injected key, for OpenAI-compatible providers
    #: with another convention (Azure's ``api-key``).  None: the provider's own.
    auth_header: str | None = None
    #: Path prefixes clients may call; others get 403.  None: any path.
    allowed_paths: tuple[str, ...] | None = None
    #: A PEM file of CA certificates to trust for the upstream, instead of
    #: the system's.
    ca_file: str | None = None
    #: Verify the upstream's certificate (turning it off logs a warning at
    #: every start).
    tls_verify: bool = True
    #: Idle upstream connections kept open for reuse.
    max_idle_connections: int = 100
    #: Seconds an idle upstream connection is kept; below the upstream's own
    #: keep-alive so a request never lands on a connection it just closed.
    idle_connection_timeout: float = 50.0
    #: Consecutive failures after which the upstream is skipped for a
    #: cool-down (passive health); 0: never.
    eject_after: int = 5
    #: Seconds of the first cool-down; it doubles while the upstream keeps
    #: failing, up to ``max_cooldown``.
    cooldown: float = 30.0
    max_cooldown: float = 300.0


#: Statuses that send a call on to a route's next upstream by default.
DEFAULT_FAILOVER_ON = frozenset({429, 500, 502, 503, 504})


@attrs.frozen
class RouteConfig:
    """
    One entry of ``routes``: what a call must match (every given field), and
    the upstreams to try in order.
    """

    upstreams: tuple[str, ...]
    #: A path prefix.
    path: str | None = None
    #: A glob on the request body's ``model``.
    model: str | None = None
    #: Header names (lower case) and the exact values they must have.
    header: tuple[tuple[str, str], ...] = ()
    failover_on: frozenset[int] = DEFAULT_FAILOVER_ON

    def describe(self) -> str:
        """
        One line of the route table.
        """
        match = []
        if self.path is not None:
            match.append(f"path {self.path}*")
        if self.model is not None:
            match.append(f"model {self.model}")
        for name, value in self.header:
            match.append(f"header {name}: {value}")
        return f"{' and '.join(match) or 'any call'} -> {' then '.join(self.upstreams)}"


@attrs.frozen
class MiddlewareConfig:
    type: str
    enabled: bool = True
    config: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class SessionStoreConfig:
    type: str = "memory"
    url: str = attrs.field(default="redis://127.0.0.1:6379/0", repr=False)
    key_prefix: str = "llmgate:"


@attrs.frozen
class SessionConfig:
    enabled: bool = True
    max_sessions: int = 10_000
    session_ttl_seconds: float = 3600.0
    fuzzy_matching: bool = True
    reset_phrases: tuple[str, ...] = (
        "start over",
        "new conversation",
        "new chat",
        "forget everything",
        "reset the conversation",
    )
    #: Request headers whose value is the client's own session id, tried in
    #: order (see docs/sessions.md and docs/clients.md).
    client_headers: tuple[str, ...] = (
        "x-llmgate-session-id",
        "x-claude-code-session-id",
        "session-id",
        "thread-id",
        "x-session-affinity",
        "x-opencode-session",
    )
    store: SessionStoreConfig = SessionStoreConfig()


@attrs.frozen
class LoggingConfig:
    level: str = "info"
    format: str = "text"
    file: str | None = None


@attrs.frozen
class AuthConfig:
    #: SHA-256 digests of the client tokens; the tokens themselves are not kept.
    token_hashes: frozenset[bytes] = attrs.field(default=frozenset(), repr=False)
    admin_token_hashes: frozenset[bytes] = attrs.field(default=frozenset(), repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.token_hashes)


@attrs.frozen
class MetricsConfig:
    enabled: bool = True


@attrs.frozen
class UsageConfig:
    #: Ask OpenAI for stream usage when the client did not, and hide the
    #: extra chunk from the client.
    include_stream_usage: bool = False


@attrs.frozen
class ManholeConfig:
    enabled: bool = False
    #: A UNIX socket (made mode 600) or a loopback TCP endpoint.
    listen: str = "unix:/run/llmgate/manhole.sock:mode=600"
    authorized_keys: str | None = None
    #: Where the console's SSH host key is kept (created if missing); None:
    #: a new key each start.
    host_key: str | None = None


@attrs.frozen
class OTLPConfig:
    """
    Where and how spans are exported (OTLP over HTTP, protobuf).
    """

    #: The collector's base URL; ``/v1/traces`` is appended.
    endpoint: str = "http://127.0.0.1:4318"
    #: Sent with every export (an API key for a hosted backend): secrets.
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    service_name: str = "llmgate"
    sample_ratio: float = 1.0
    #: Messages as span events; off by default (they are the users' words).
    capture_content: bool = False
    #: Seconds one export may take, retries included.
    timeout: float = 10.0
    #: Spans waiting for export at most; beyond, new ones are dropped and counted.
    max_queue: int = 2048


@attrs.frozen
class TelemetryConfig:
    #: None: telemetry is off.
    otlp: OTLPConfig | None = None


@attrs.frozen
class UIConfig:
    """
    The live view (``/ui/``, ``/api/``), read from the trace directory.
    """

    #: None: on when a trace middleware is on.
    enabled: bool | None = None
    #: Sessions and calls the index holds at most; the oldest go first.
    max_sessions: int = 10_000
    max_calls: int = 100_000
    #: How new trace files are noticed: ``auto`` (inotify on Linux, else a
    #: poll), ``inotify`` or ``poll`` (for network file systems, where
    #: inotify misses other machines' writes).
    watch: str = "auto"
    #: How often the trace directory is listed when polling.
    poll_seconds: float = 2.0


@attrs.frozen
class PoolConfig:
    """
    How long a kept upstream connection lives: it is closed after
    ``max_requests`` answers, or once idle ``max_idle`` seconds (below the
    4-5 s keep-alive of uvicorn, Node and gunicorn servers, so a call never
    meets a connection the upstream is closing).
    """

    max_requests: int = 1000
    max_idle: float = 4.0


@attrs.frozen
class GatewayConfig:
    server: ServerConfig = ServerConfig()
    #: The default upstream: the first catch-all route's first upstream (or
    #: the first upstream); with the ``llm:`` shorthand, the only one.
    llm: LLMConfig = LLMConfig()
    #: Every upstream by name; ``llm:`` alone makes one named ``default``.
    upstreams: Mapping[str, LLMConfig] = attrs.field(
        factory=lambda: {"default": LLMConfig()}, hash=False
    )
    routes: tuple[RouteConfig, ...] = (RouteConfig(upstreams=("default",)),)
    middlewares: tuple[MiddlewareConfig, ...] = ()
    session: SessionConfig = SessionConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    usage: UsageConfig = UsageConfig()
    manhole: ManholeConfig = ManholeConfig()
    auth: AuthConfig = AuthConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    ui: UIConfig = UIConfig()
    pool: PoolConfig = PoolConfig()
    #: Where the file part came from, for messages; None when there was none.
    source: str | None = None

    @property
    def injects_key(self) -> bool:
        """
        Whether any upstream has a key of the gateway's to inject.
        """
        return any(up.api_key is not None for up in self.upstreams.values())

    def redacted(self) -> dict[str, Any]:
        """
        The configuration as plain data with every secret replaced by whether
        it is set, fit for ``/config``, logs and the console.
        """
        data = attrs.asdict(self, recurse=True)
        for redacted, llm in (
            (data["llm"], self.llm),
            *((data["upstreams"][name], up) for name, up in self.upstreams.items()),
        ):
            redacted["api_key"] = {"configured": llm.api_key is not None}
            redacted["base_url"] = _redact_url(llm.base_url)
        data["routes"] = [
            {
                "path": route.path,
                "model": route.model,
                "header": dict(route.header),
                "upstreams": list(route.upstreams),
                "failover_on": sorted(route.failover_on),
                "describe": route.describe(),
            }
            for route in self.routes
        ]
        store = data["session"]["store"]
        store["url"] = _redact_url(self.session.store.url)
        data["auth"] = {
            "client_tokens": len(self.auth.token_hashes),
            "admin_tokens": len(self.auth.admin_token_hashes),
        }
        otlp = self.telemetry.otlp
        if otlp is not None:
            shown = data["telemetry"]["otlp"]
            shown["endpoint"] = _redact_url(otlp.endpoint)
            shown["headers"] = {name: "(redacted)" for name in otlp.headers}
        return data


_DEFAULTS_ServerConfig = ServerConfig()
_DEFAULTS_LLMConfig = LLMConfig()
_DEFAULTS_SessionConfig = SessionConfig()
_DEFAULTS_LoggingConfig = LoggingConfig()
_DEFAULTS_PoolConfig = PoolConfig()


# -- loading -----------------------------------------------------------------


def expand_environment(value: Any, environ: Mapping[str, str], field: str) -> Any:
    """
    Replace ``${VAR}`` (or ``${VAR:-default}``) in every string of a parsed
    YAML document with the environment's value.

    :raises ConfigError: when a referenced variable is unset and has no default.
    """
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{field}: environment variable {name} is not set")

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {
            key: expand_environment(item, environ, _join(field, str(key)))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            expand_environment(item, environ, f"{field}[{index}]")
            for index, item in enumerate(value)
        ]
    return value


def read_file(path: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """
    Read and parse a YAML configuration file, environment references expanded.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError(f"config: cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config: {path} is not valid YAML{at}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return expand_environment(document, environ, "")


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    """
    Build the configuration from a file, the environment and flags.

    :param path: the YAML file, or None for none.
    :param environ: the environment (``os.environ`` when None).
    :param overrides: dotted field names (``llm.base_url``) to values, from
        command-line flags; None values are ignored.
    :raises ConfigError: naming the first bad field.
    """
    if environ is None:
        environ = os.environ
    document = read_file(path, environ) if path else {}
    for variable, field in ENVIRONMENT.items():
        value = environ.get(variable)
        if value and field.startswith("llm.") and "upstreams" in document:
            # The shorthand's variables do not mix with named upstreams.
            continue
        if value:
            _set(document, field, value)
    for field, value in (overrides or {}).items():
        if value is not None:
            _set(document, field, value)
    _otel_environment(document, environ)
    return parse(document, source=path)


def parse(document: Mapping[str, Any], source: str | None = None) -> GatewayConfig:
    """
    Validate a configuration document (as parsed from YAML) into a
    :class:`GatewayConfig`.
    """
    top = _Section(document, "")
    top.allow(
        {
            "server", "llm", "upstreams", "routes", "middlewares", "session", "logging",
            "metrics", "usage", "manhole", "auth", "pool", "ui", "telemetry",
        }
    )
    from llmgate.routing import parse_upstreams

    llm, upstreams, routes = parse_upstreams(top)
    config = GatewayConfig(
        server=_server(top.section("server")),
        llm=llm,
        upstreams=upstreams,
        routes=routes,
        middlewares=_middlewares(top.get("middlewares", [])),
        session=_session(top.section("session")),
        logging=_logging(top.section("logging")),
        metrics=_metrics(top.section("metrics")),
        usage=_usage(top.section("usage")),
        manhole=_manhole(top.section("manhole")),
        auth=_auth(top.section("auth")),
        telemetry=_telemetry(top.section("telemetry")),
        ui=_ui(top.section("ui")),
        pool=_pool(top.section("pool")),
        source=source,
    )
    _refuse_open_relay(config)
    if (
        config.server.workers > 1
        and config.session.enabled
        and config.session.store.type == "memory"
    ):
        raise ConfigError(
            f"server.workers: {config.server.workers} workers with the in-memory session "
            "store would split conversations between processes; set session.store.type: "
            "redis (or session.enabled: false)"
        )
    if config.server.workers > 1 and config.server.listen is not None:
        raise ConfigError(
            "server.listen: several workers share host and port (SO_REUSEPORT); "
            "use server.host and server.port"
        )
    return config


def _refuse_open_relay(config: GatewayConfig) -> None:
    """
    A gateway that injects a key, is reachable from other machines and lets
    anyone in spends the key for anyone: refuse it unless it is meant.
    """
    server = config.server
    if not config.injects_key or config.auth.enabled or server.allow_open_relay:
        return
    if server.listen is not None:
        if not server.listen.startswith(("unix:", "systemd:")) and not _loopback_listen(
            server.listen
        ):
            raise ConfigError(
                f"server.listen: {server.listen!r} with an injected key and no client "
                "auth is an open relay; set auth.tokens, listen on loopback, or "
                "server.allow_open_relay: true"
            )
        return
    if not _is_loopback(server.host):
        raise ConfigError(
            f"server.host: {server.host!r} with an injected key and no client auth is "
            "an open relay; set auth.tokens, listen on 127.0.0.1, or "
            "server.allow_open_relay: true"
        )


def _redact_url(url: str) -> str:
    """
    A URL with any password replaced, for views and logs.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return parts._replace(netloc=f"{user}[redacted]@{netloc}").geturl()


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_listen(description: str) -> bool:
    """
    Whether a server endpoint listens on loopback only, read with Twisted's
    own parser (a repeated ``interface=`` counts as Twisted counts it).
    """
    from twisted.internet.endpoints import _parseServer

    try:
        _, _, kwargs = _parseServer(description, None)
    except Exception:
        return False
    interface = str(kwargs.get("interface", ""))
    return bool(interface) and _is_loopback(interface)


def _auth(section: _Section) -> AuthConfig:
    section.allow({"tokens", "tokens_file", "admin_tokens", "admin_tokens_file"})
    tokens = _tokens(section, "tokens") | _tokens_file(section, "tokens_file")
    admin = _tokens(section, "admin_tokens") | _tokens_file(section, "admin_tokens_file")
    return AuthConfig(token_hashes=frozenset(tokens), admin_token_hashes=frozenset(admin))


def token_hash(token: str | bytes) -> bytes:
    import hashlib

    if isinstance(token, str):
        token = token.encode("utf-8")
    return hashlib.sha256(token).digest()


def _tokens(section: _Section, key: str) -> set[bytes]:
    value = section.get(key, None)
    if value is None:
        return set()
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise ConfigError(f"{_join(section.name, key)}: must be a list of non-empty strings")
    short = [t for t in value if len(t) < 16]
    if short:
        raise ConfigError(f"{_join(section.name, key)}: every token needs 16 characters or more")
    return {token_hash(t) for t in value}


def _tokens_file(section: _Section, key: str) -> set[bytes]:
    path = section.optional_string(key)
    if path is None:
        return set()
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as error:
        raise ConfigError(
            f"{_join(section.name, key)}: cannot read {path}: {error.strerror}"
        ) from None
    tokens = [line for line in lines if line and not line.startswith("#")]
    if any(len(t) < 16 for t in tokens):
        raise ConfigError(f"{_join(section.name, key)}: every token in {path} needs 16 characters or more")
    return {token_hash(t) for t in tokens}


def _server(section: _Section) -> ServerConfig:
    section.allow(set(attrs.fields_dict(ServerConfig)))
    listen = section.optional_string("listen")
    if listen is not None:
        from twisted.internet.endpoints import _parseServer

        try:
            _parseServer(listen, None)
        except Exception as error:  # any parse failure is the user's
            section.fail("listen", listen, f"is not a server endpoint ({error})")
    return ServerConfig(
        host=section.string("host", _DEFAULTS_ServerConfig.host),
        port=section.integer("port", _DEFAULTS_ServerConfig.port, 0, 65535),
        listen=listen,
        max_request_body=section.integer(
            "max_request_body", _DEFAULTS_ServerConfig.max_request_body, 1, 2**40
        ),
        shutdown_timeout=section.number(
            "shutdown_timeout", _DEFAULTS_ServerConfig.shutdown_timeout, 0, 86400
        ),
        max_concurrent=section.integer(
            "max_concurrent", _DEFAULTS_ServerConfig.max_concurrent, 0, 10**7
        ),
        request_timeout=section.number(
            "request_timeout", _DEFAULTS_ServerConfig.request_timeout, 0.1, 86400
        ),
        max_headers=section.integer("max_headers", _DEFAULTS_ServerConfig.max_headers, 1, 10_000),
        max_header_bytes=section.integer(
            "max_header_bytes", _DEFAULTS_ServerConfig.max_header_bytes, 256, 10**7
        ),
        allow_open_relay=section.boolean("allow_open_relay", False),
        workers=section.integer("workers", 1, 1, 256),
    )


def _llm(section: _Section) -> LLMConfig:
    """
    ``llm:``, or one entry of ``upstreams:``: an upstream and how to reach it.
    """
    section.allow(set(attrs.fields_dict(LLMConfig)))
    kind_given = str(section.get("type", "openai")).lower()
    default_url = DEFAULT_BASE_URLS.get(kind_given, _DEFAULTS_LLMConfig.base_url)
    base_url = section.string("base_url", default_url).rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        section.fail("base_url", base_url, "is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        section.fail("base_url", base_url, "must not have a query or fragment")
    try:
        _ = parts.port  # raises for an invalid port
    except ValueError:
        section.fail("base_url", base_url, "has an invalid port")
    kind = section.choice("type", _DEFAULTS_LLMConfig.type, PROVIDER_TYPES)
    api_key = section.optional_string("api_key") or None
    auth_header = section.optional_string("auth_header")
    if auth_header is not None and not re.fullmatch(r"[A-Za-z0-9-]+", auth_header):
        section.fail("auth_header", auth_header, "is not a header name")
    allowed = section.get("allowed_paths", None)
    if allowed is not None:
        if not isinstance(allowed, list) or not all(
            isinstance(p, str) and p.startswith("/") for p in allowed
        ):
            section.fail("allowed_paths", allowed, "must be a list of paths starting with /")
        allowed = tuple(allowed)
    ca_file = section.optional_string("ca_file")
    if ca_file is not None:
        try:
            with open(ca_file, "rb") as handle:
                pem = handle.read()
        except OSError:
            section.fail("ca_file", ca_file, "is not a readable file")
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            section.fail("ca_file", ca_file, "holds no PEM certificate")
    return LLMConfig(
        base_url=base_url,
        allowed_paths=allowed,
        ca_file=ca_file,
        tls_verify=section.boolean("tls_verify", True),
        type=kind,
        api_key=api_key,
        timeout=section.number("timeout", _DEFAULTS_LLMConfig.timeout, 0.001, 86400),
        idle_timeout=section.number(
            "idle_timeout", _DEFAULTS_LLMConfig.idle_timeout, 0.001, 86400
        ),
        auth_header=auth_header.lower() if auth_header else None,
        max_idle_connections=section.integer(
            "max_idle_connections", _DEFAULTS_LLMConfig.max_idle_connections, 0, 100_000
        ),
        idle_connection_timeout=section.number(
            "idle_connection_timeout", _DEFAULTS_LLMConfig.idle_connection_timeout, 0.001, 86400
        ),
        eject_after=section.integer("eject_after", _DEFAULTS_LLMConfig.eject_after, 0, 10**6),
        cooldown=section.number("cooldown", _DEFAULTS_LLMConfig.cooldown, 0.001, 86400),
        max_cooldown=section.number(
            "max_cooldown", _DEFAULTS_LLMConfig.max_cooldown, 0.001, 86400 * 7
        ),
    )


def _middlewares(value: Any) -> tuple[MiddlewareConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"middlewares: {_show(value)} must be a list")
    result = []
    for index, item in enumerate(value):
        section = _Section(item, f"middlewares[{index}]")
        section.allow({"type", "enabled", "config"})
        kind = section.string("type", None)
        config = section.get("config", {}) or {}
        if not isinstance(config, dict):
            section.fail("config", config, "must be a mapping")
        result.append(
            MiddlewareConfig(
                type=kind,
                enabled=section.boolean("enabled", True),
                config=config,
            )
        )
    return tuple(result)


#: An HTTP header name (RFC 9110 token characters).
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


def _session(section: _Section) -> SessionConfig:
    section.allow(set(attrs.fields_dict(SessionConfig)))
    phrases = section.get("reset_phrases", None)
    if phrases is None:
        reset_phrases = _DEFAULTS_SessionConfig.reset_phrases
    elif isinstance(phrases, list) and all(isinstance(p, str) for p in phrases):
        reset_phrases = tuple(p.lower() for p in phrases)
    else:
        section.fail("reset_phrases", phrases, "must be a list of strings")
    headers = section.get("client_headers", None)
    if headers is None:
        client_headers = _DEFAULTS_SessionConfig.client_headers
    elif isinstance(headers, list) and all(isinstance(h, str) and _HEADER_NAME.fullmatch(h) for h in headers):
        client_headers = tuple(dict.fromkeys(h.lower() for h in headers))
    else:
        section.fail("client_headers", headers, "must be a list of HTTP header names")
    return SessionConfig(
        enabled=section.boolean("enabled", _DEFAULTS_SessionConfig.enabled),
        max_sessions=section.integer(
            "max_sessions", _DEFAULTS_SessionConfig.max_sessions, 1, 100_000_000
        ),
        session_ttl_seconds=section.number(
            "session_ttl_seconds", _DEFAULTS_SessionConfig.session_ttl_seconds, 1, 10**9
        ),
        fuzzy_matching=section.boolean("fuzzy_matching", _DEFAULTS_SessionConfig.fuzzy_matching),
        reset_phrases=reset_phrases,
        client_headers=client_headers,
        store=_store(section.section("store")),
    )


def _store(section: _Section) -> SessionStoreConfig:
    section.allow({"type", "url", "key_prefix"})
    kind = section.choice("type", "memory", ("memory", "redis"))
    url = section.string("url", SessionStoreConfig().url)
    if kind == "redis" and urlsplit(url).scheme not in ("redis", "unix"):
        section.fail("url", url, "is not a redis:// URL")
    return SessionStoreConfig(
        type=kind, url=url, key_prefix=section.string("key_prefix", "llmgate:")
    )


def _logging(section: _Section) -> LoggingConfig:
    section.allow(set(attrs.fields_dict(LoggingConfig)))
    level = section.string("level", _DEFAULTS_LoggingConfig.level).lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        section.fail("level", level, f"is not one of {', '.join(LOG_LEVELS)}")
    return LoggingConfig(
        level=level,
        format=section.choice("format", _DEFAULTS_LoggingConfig.format, LOG_FORMATS),
        file=section.optional_string("file"),
    )


def _metrics(section: _Section) -> MetricsConfig:
    section.allow({"enabled"})
    return MetricsConfig(enabled=section.boolean("enabled", True))


def _usage(section: _Section) -> UsageConfig:
    section.allow({"include_stream_usage"})
    return UsageConfig(
        include_stream_usage=section.boolean("include_stream_usage", False)
    )


def _ui(section: _Section) -> UIConfig:
    section.allow(set(attrs.fields_dict(UIConfig)))
    enabled = section.get("enabled", None)
    defaults = UIConfig()
    return UIConfig(
        enabled=None if enabled is None else section.boolean("enabled", True),
        max_sessions=section.integer("max_sessions", defaults.max_sessions, 1, 10**7),
        max_calls=section.integer("max_calls", defaults.max_calls, 1, 10**7),
        watch=section.choice("watch", defaults.watch, ("auto", "inotify", "poll")),
        poll_seconds=section.number("poll_seconds", defaults.poll_seconds, 0.1, 3600),
    )


def _pool(section: _Section) -> PoolConfig:
    section.allow({"max_requests", "max_idle"})
    return PoolConfig(
        max_requests=section.integer("max_requests", _DEFAULTS_PoolConfig.max_requests, 1, 10_000_000),
        max_idle=section.number("max_idle", _DEFAULTS_PoolConfig.max_idle, 0.001, 86400),
    )


def _manhole(section: _Section) -> ManholeConfig:
    section.allow(set(attrs.fields_dict(ManholeConfig)))
    enabled = section.boolean("enabled", False)
    authorized_keys = section.optional_string("authorized_keys")
    if enabled and not authorized_keys:
        raise ConfigError("manhole.authorized_keys: is required when the manhole is enabled")
    listen = section.string("listen", ManholeConfig().listen)
    if enabled:
        from llmgate.console import check_listen

        listen = check_listen(listen)
    return ManholeConfig(
        enabled=enabled,
        listen=listen,
        authorized_keys=authorized_keys,
        host_key=section.optional_string("host_key"),
    )


def _otel_environment(document: dict[str, Any], environ: Mapping[str, str]) -> None:
    """
    Fill what ``telemetry.otlp`` leaves unset from OpenTelemetry's variables.
    """
    telemetry = document.get("telemetry")
    if not isinstance(telemetry, dict) or "otlp" not in telemetry:
        return
    otlp = telemetry["otlp"]
    if otlp is None:
        otlp = telemetry["otlp"] = {}
    if not isinstance(otlp, dict):
        return
    for variable, key in OTEL_ENVIRONMENT.items():
        value = environ.get(variable)
        if value and key not in otlp:
            otlp[key] = _otel_headers(value) if key == "headers" else value


def _otel_headers(value: str) -> dict[str, str]:
    """
    ``OTEL_EXPORTER_OTLP_HEADERS``: ``key1=value1,key2=value2``, values
    percent-encoded, as the OpenTelemetry specification has it.
    """
    from urllib.parse import unquote

    headers = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            # The value may be a secret: name the variable, never show it.
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_HEADERS: (value hidden) must be key=value pairs "
                "separated by commas"
            )
        headers[unquote(name.strip())] = unquote(text.strip())
    return headers


def _telemetry(section: _Section) -> TelemetryConfig:
    section.allow({"otlp"})
    if "otlp" not in section.data:
        return TelemetryConfig()
    otlp = section.section("otlp")
    otlp.allow(set(attrs.fields_dict(OTLPConfig)))
    defaults = OTLPConfig()
    endpoint = otlp.string("endpoint", defaults.endpoint)
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        otlp.fail("endpoint", endpoint, "is not an http:// or https:// URL")
    headers = otlp.get("headers", None) or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(
            f"{_join(otlp.name, 'headers')}: (value hidden) must map header names to strings"
        )
    return TelemetryConfig(
        otlp=OTLPConfig(
            endpoint=endpoint,
            headers=dict(headers),
            service_name=otlp.string("service_name", defaults.service_name),
            sample_ratio=otlp.number("sample_ratio", defaults.sample_ratio, 0, 1),
            capture_content=otlp.boolean("capture_content", defaults.capture_content),
            timeout=otlp.number("timeout", defaults.timeout, 0.001, 3600),
            max_queue=otlp.integer("max_queue", defaults.max_queue, 1, 10**7),
        )
    )


# -- helpers -----------------------------------------------------------------


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _set(document: dict[str, Any], field: str, value: Any) -> None:
    section, key = field.split(".")
    existing = document.get(section)
    if existing is None:
        existing = document[section] = {}
    if not isinstance(existing, dict):
        raise ConfigError(f"{section}: {_show(existing)} must be a mapping")
    existing[key] = value


@attrs.define
class _Section:
    """
    One mapping of the document, with typed getters that name the field in
    every error.
    """

    data: Any
    name: str

    def __attrs_post_init__(self) -> None:
        if self.data is None:
            self.data = {}
        if not isinstance(self.data, dict):
            raise ConfigError(f"{self.name}: {_show(self.data)} must be a mapping")

    def fail(self, key: str, value: Any, why: str) -> None:
        if isinstance(value, str) and "@" in value:
            value = _redact_url(value)
        shown = "(value hidden)" if key in SECRET_KEYS else _show(value)
        raise ConfigError(f"{_join(self.name, key)}: {shown} {why}")

    def allow(self, keys: set[str]) -> None:
        for key in self.data:
            if key not in keys:
                known = ", ".join(sorted(keys))
                raise ConfigError(
                    f"{_join(self.name, str(key))}: unknown key (known: {known})"
                )

    def section(self, key: str) -> _Section:
        return _Section(self.data.get(key), _join(self.name, key))

    def get(self, key: str, default: Any) -> Any:
        return self.data.get(key, default)

    def string(self, key: str, default: str | None) -> str:
        value = self.data.get(key, default)
        if value is None:
            raise ConfigError(f"{_join(self.name, key)}: is required")
        if not isinstance(value, str) or not value:
            self.fail(key, value, "must be a non-empty string")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, value, "must be a string")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.string(key, default).lower()
        if value not in choices:
            self.fail(key, value, f"is not one of {', '.join(choices)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.fail(key, value, "must be true or false")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, value, "must be an integer")
        if not low <= value <= high:
            self.fail(key, value, f"is out of range ({low} to {high})")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, value, "must be a number")
        if not low <= value <= high:
            self.fail(key, value, f"is out of range ({low:g} to {high:g})")
        return float(value)


#: Typed, field-naming access to a mapping, for middleware configs.
Section = _Section
