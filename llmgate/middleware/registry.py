"""
Finding middleware types among the installed Twisted plugins and building the
configured ones.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject

from llmgate.config import ConfigError, GatewayConfig
from llmgate.interfaces import IMiddleware, IMiddlewareFactory


def middleware_factories(package: ModuleType | None = None) -> dict[str, Any]:
    """
    Every installed middleware type by name.

    :param package: the plugin package to scan; ``twisted.plugins`` (where
        any installed package can drop a plugin module) by default.
    """
    if package is None:
        import twisted.plugins

        package = twisted.plugins
    factories: dict[str, Any] = {}
    for factory in getPlugins(IMiddlewareFactory, package):
        factories.setdefault(factory.name, factory)
    return factories


def build_middlewares(
    config: GatewayConfig, reactor: Any, package: ModuleType | None = None
) -> list[IMiddleware]:
    """
    Build the enabled middleware of ``config``, in order.

    :raises ConfigError: for an unknown type (listing the known ones) or a
        middleware's own bad config.
    """
    from llmgate.middleware import MiddlewareContext

    wanted = [m for m in config.middlewares if m.enabled]
    telemetry = config.telemetry.otlp is not None
    if not wanted and not telemetry:
        return []
    factories = middleware_factories(package)
    context = MiddlewareContext(reactor=reactor, config=config)
    built = []
    for index, spec in enumerate(config.middlewares):
        if not spec.enabled:
            continue
        factory = factories.get(spec.type)
        if spec.type == "otel":
            raise ConfigError(
                f"middlewares[{index}].type: otel is configured under telemetry.otlp"
            )
        if factory is None:
            known = ", ".join(sorted(factories)) or "none installed"
            raise ConfigError(
                f"middlewares[{index}].type: {spec.type!r} is not a known "
                f"middleware (known: {known})"
            )
        try:
            middleware = factory.build(dict(spec.config), context)
        except ConfigError as error:
            raise ConfigError(f"middlewares[{index}].config.{error}") from None
        verifyObject(IMiddleware, middleware)
        built.append(middleware)
    if telemetry:
        # Last, so that its request hook sees the request as it will leave
        # and its finish hook runs before the others' (nothing waits on it).
        factory = factories.get("otel")
        if factory is None:
            raise ConfigError("telemetry.otlp: no otel middleware is installed")
        middleware = factory.build({}, context)
        verifyObject(IMiddleware, middleware)
        built.append(middleware)
    return built
