"""
Which upstream a call goes to: the ``upstreams:`` and ``routes:`` sections
of the configuration, the route table compiled once, and each upstream's
passive health.

Routing runs for every call, so the table is compiled at start: a path
prefix is a ``bytes.startswith``, a header an exact comparison, and a model
glob a compiled regular expression, matched only when a route that needs the
model is reached.  The model itself is read from the body without parsing it
when nothing has parsed it yet (see :func:`model_of`).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import unquote_to_bytes

import attrs

from llmgate.config import (
    DEFAULT_FAILOVER_ON,
    ConfigError,
    LLMConfig,
    RouteConfig,
    _llm,
    _Section,
    _show,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_ROUTE_KEYS = {"path", "model", "header", "upstream", "failover_on"}


def parse_upstreams(
    top: _Section,
) -> tuple[LLMConfig, dict[str, LLMConfig], tuple[RouteConfig, ...]]:
    """
    The default upstream, every upstream by name, and the routes, from
    ``llm:`` (the one-upstream shorthand) or ``upstreams:`` and ``routes:``.

    :raises ConfigError: naming the field.
    """
    has_llm = top.get("llm", None) is not None
    has_upstreams = top.get("upstreams", None) is not None
    if has_llm and has_upstreams:
        raise ConfigError(
            "llm: cannot be combined with upstreams (llm is the one-upstream "
            "shorthand: move it into upstreams)"
        )
    if not has_upstreams:
        if top.get("routes", None) is not None:
            raise ConfigError("routes: needs upstreams (routes name upstreams)")
        llm = _llm(top.section("llm"))
        return llm, {"default": llm}, (RouteConfig(upstreams=("default",)),)
    raw = top.get("upstreams", None)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"upstreams: {_show(raw)} must be a non-empty mapping of names")
    upstreams: dict[str, LLMConfig] = {}
    section = top.section("upstreams")
    for name in raw:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"upstreams.{name}: is not a name (letters, digits, '_', '.', '-')"
            )
        upstreams[name] = _llm(section.section(name))
    routes = _routes(top.get("routes", None), upstreams)
    default = next((r.upstreams[0] for r in routes if _catch_all(r)), next(iter(upstreams)))
    return upstreams[default], upstreams, routes


def _catch_all(route: RouteConfig) -> bool:
    return route.path is None and route.model is None and not route.header


def _routes(value: Any, upstreams: Mapping[str, LLMConfig]) -> tuple[RouteConfig, ...]:
    if value is None:
        if len(upstreams) == 1:
            return (RouteConfig(upstreams=tuple(upstreams)),)
        raise ConfigError("routes: is required with more than one upstream")
    if not isinstance(value, list) or not value:
        raise ConfigError(f"routes: {_show(value)} must be a non-empty list")
    routes = []
    for index, item in enumerate(value):
        section = _Section(item, f"routes[{index}]")
        section.allow(_ROUTE_KEYS)
        routes.append(_route(section, upstreams))
    return tuple(routes)


def _route(section: _Section, upstreams: Mapping[str, LLMConfig]) -> RouteConfig:
    target = section.get("upstream", None)
    names = [target] if isinstance(target, str) else target
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"{section.name}.upstream: is required: an upstream name, or a list of them"
        )
    for name in names:
        if name not in upstreams:
            known = ", ".join(upstreams)
            section.fail("upstream", name, f"is not a configured upstream (known: {known})")
    if len(set(names)) != len(names):
        section.fail("upstream", names, "names an upstream twice")
    path = section.optional_string("path")
    if path is not None and not path.startswith("/"):
        section.fail("path", path, "must start with /")
    model = section.optional_string("model")
    if model is not None and not model:
        section.fail("model", model, "must not be empty")
    header = section.get("header", None)
    pairs: tuple[tuple[str, str], ...] = ()
    if header is not None:
        if not isinstance(header, dict) or not header or not all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9-]+", k) and isinstance(v, str)
            for k, v in header.items()
        ):
            section.fail("header", header, "must map header names to string values")
        pairs = tuple((k.lower(), v) for k, v in header.items())
    failover = section.get("failover_on", None)
    statuses = DEFAULT_FAILOVER_ON
    if failover is not None:
        if not isinstance(failover, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in failover
        ):
            section.fail("failover_on", failover, "must be a list of HTTP statuses")
        statuses = frozenset(failover)
    return RouteConfig(
        upstreams=tuple(names), path=path, model=model, header=pairs, failover_on=statuses
    )


# -- matching ------------------------------------------------------------------


def path_allowed(path: bytes, prefixes: tuple[bytes, ...]) -> bool:
    """
    Whether ``path`` is under one of ``prefixes`` once decoded as the
    upstream will: no dot segments, no encoded slash or backslash.
    """
    lowered = path.lower()
    if b"%2f" in lowered or b"%5c" in lowered or b"\\" in path:
        return False
    decoded = unquote_to_bytes(path)
    if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
        return False
    return decoded.startswith(prefixes)

#: Distinct paths (and, per path, distinct models and header values) whose
#: routing is remembered.
_PLANS = 4096

_MODEL_AT = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')


def model_key(body: bytes, parsed: Any = None, parse: Callable[[], Any] | None = None) -> bytes | None:
    """
    The top-level ``model`` of a JSON request body, as UTF-8 bytes.

    :param parsed: the body already parsed, when something parsed it (the
        session stage does): then it is read from there, for free.
    :param parse: parses the body when that is needed (by default
        ``json.loads``); the forwarder passes the exchange's own, cached parse.
    :return: the model, or None.  Without ``parsed``, when ``"model"`` occurs
        once in the body it is found by searching the bytes (a quote inside a
        JSON string is escaped, so text never contains it); it is then the
        top-level key, since every API requires one.  A body that holds it
        more than once (a nested object, a tool's schema), or whose model is
        not a plain string, is parsed.
    """
    if parsed is None:
        start = body.find(b'"model"')
        if start < 0:
            return None
        if body.find(b'"model"', start + 7) < 0:
            found = _MODEL_AT.match(body, start)
            if found is not None:
                return found.group(1)
        parsed = parse() if parse is not None else _parse(body)
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model.encode("utf-8", "surrogatepass") if isinstance(model, str) else None


def model_of(body: bytes, parsed: Any = None, parse: Callable[[], Any] | None = None) -> str | None:
    """
    :func:`model_key` as a string (None when it is not UTF-8).
    """
    key = model_key(body, parsed, parse)
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse(body: bytes) -> Any:
    import json

    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


@attrs.frozen
class CompiledRoute:
    """
    A route ready to match: bytes to compare, a compiled glob.
    """

    config: RouteConfig
    index: int
    path: bytes | None
    model: Callable[[str], Any] | None
    header: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def of(cls, config: RouteConfig, index: int) -> CompiledRoute:
        return cls(
            config=config,
            index=index,
            path=config.path.encode("utf-8") if config.path is not None else None,
            model=re.compile(fnmatch.translate(config.model)).match
            if config.model is not None
            else None,
            header=tuple((n.encode("ascii"), v.encode("utf-8")) for n, v in config.header),
        )

    @property
    def unconditional(self) -> bool:
        return self.model is None and not self.header


class _Plan:
    """
    The routes one path can match, what deciding among them needs (the
    model? which headers?), and the decisions made so far by model and
    header values.
    """

    __slots__ = ("routes", "only", "needs_model", "headers", "decided")

    def __init__(self, routes: tuple[CompiledRoute, ...]) -> None:
        self.routes = routes
        #: The first route when it has no condition left: every call's.
        self.only = routes[0] if routes and routes[0].unconditional else None
        self.needs_model = any(r.model is not None for r in routes)
        self.headers = tuple(dict.fromkeys(name for r in routes for name, _ in r.header))
        self.decided: dict[tuple[bytes | None, tuple[Any, ...]], CompiledRoute | None] = {}

    def decide(self, model: bytes | None, values: tuple[Any, ...]) -> CompiledRoute | None:
        name: str | None = None
        if model is not None:
            try:
                name = model.decode("utf-8")
            except UnicodeDecodeError:
                pass
        given = dict(zip(self.headers, values))
        for route in self.routes:
            if route.header and not all(value in given[n] for n, value in route.header):
                continue
            if route.model is not None and (name is None or route.model(name) is None):
                continue
            return route
        return None


_UNDECIDED = object()


def _values(raw: list[bytes] | None) -> tuple[bytes, ...]:
    return tuple(raw) if raw else ()


class Router:
    """
    The compiled route table: first match wins.

    Which routes a path can match is worked out once per distinct path; a
    call's route then depends only on its model and the values of the
    headers some route names, and is remembered by those (up to
    :data:`_PLANS` of each), so a call costs a few dict lookups.
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = tuple(CompiledRoute.of(route, i) for i, route in enumerate(routes))
        #: Whether any route needs the request's model.
        self.needs_model = any(r.model is not None for r in self.routes)
        self._plans: dict[bytes, _Plan] = {}

    def _plan(self, path: bytes) -> _Plan:
        routes = tuple(r for r in self.routes if r.path is None or path.startswith(r.path))
        # Nothing after a route with no other condition can match.
        for end, route in enumerate(routes):
            if route.unconditional:
                routes = routes[: end + 1]
                break
        plan = _Plan(routes)
        if len(self._plans) < _PLANS:
            self._plans[path] = plan
        return plan

    def match(
        self, path: bytes, headers: Any, model: Callable[[], bytes | None]
    ) -> CompiledRoute | None:
        """
        The first route ``path``, ``headers`` (a ``Headers``) and the model
        match, or None.

        :param model: the request's model as bytes (:func:`model_key`);
            called at most once, and only if the path's routes need it.
        """
        plan = self._plans.get(path)
        if plan is None:
            plan = self._plan(path)
        if plan.only is not None:
            return plan.only
        name = model() if plan.needs_model else None
        values: tuple[Any, ...] = ()
        if plan.headers:
            values = tuple(_values(headers.getRawHeaders(h)) for h in plan.headers)
        key = (name, values)
        route = plan.decided.get(key, _UNDECIDED)
        if route is _UNDECIDED:
            route = plan.decide(name, values)
            if len(plan.decided) < _PLANS:
                plan.decided[key] = route
        return route  # type: ignore[return-value]

    def table(self) -> list[str]:
        """
        The route table, one line per route, for ``--validate-config``.
        """
        return [f"{r.index + 1}. {r.config.describe()}" for r in self.routes]
