"""
llmgate's own middleware types, as Twisted plugins.

A package adds a middleware type the same way: a module in its own
``twisted/plugins/`` directory holding an object that provides
``llmgate.interfaces.IMiddlewareFactory`` and ``twisted.plugin.IPlugin``.
Nothing heavy is imported here; each factory imports its module on use.
"""

from importlib import import_module

from twisted.plugin import IPlugin
from zope.interface import implementer

from llmgate.interfaces import IMiddlewareFactory


@implementer(IPlugin, IMiddlewareFactory)
class _LazyMiddleware:
    def __init__(self, name: str, module: str, factory: str) -> None:
        self.name = name
        self._module = module
        self._factory = factory

    def build(self, config, context):
        return getattr(import_module(self._module), self._factory)(config, context)


trace = _LazyMiddleware("trace", "llmgate.middleware.trace", "build")
printer = _LazyMiddleware("printer", "llmgate.middleware.printer", "build")
#: Built from ``telemetry.otlp``, not listed in ``middlewares``.
otel = _LazyMiddleware("otel", "llmgate.middleware.otel", "build")
