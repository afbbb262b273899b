"""
Finding a call's API shape from its path: the built-in shapes, and those
installed packages add as Twisted plugins.

A shape is decided once per call, before any middleware, from the path
alone: the path is what a client chose, and an upstream that answers several
APIs (vLLM, llama.cpp, LiteLLM) answers each in its own shape.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Iterable

from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface import implementer
from zope.interface.verify import verifyObject

from llmgate.interfaces import IApiShape
from llmgate.providers.anthropic_messages import COUNT_TOKENS, MESSAGES
from llmgate.providers.base import Shape
from llmgate.providers.openai_chat import CHAT, COMPLETIONS, EMBEDDINGS, ChatStream, chat_answer
from llmgate.providers.openai_responses import RESPONSES, ResponsesStream, answer_of_document

#: Paths remembered per registry; beyond, shapes are looked up each time.
_CACHE_SIZE = 4096


@implementer(IApiShape)
class Opaque(Shape):
    """
    Any other path: relayed as it is, read for usage if it carries any, and
    the gateway's own errors written in its upstreams' family's shape.
    """

    name = "opaque"
    priority = -1000

    def __init__(self, system: str = "openai") -> None:
        self.system = system


@implementer(IApiShape)
class AnyOpenAI(Shape):
    """
    The name ``openai`` of traces and callers from before shapes were told
    apart by path: chat completions or Responses, told apart by content.
    """

    name = "openai"
    system = "openai"
    priority = -1000

    def history(self, body: Any) -> Any:
        if not isinstance(body, dict):
            return None
        if isinstance(body.get("messages"), list):
            return CHAT.history(body)
        return RESPONSES.history(body)

    def answer_from_body(self, document: Any) -> Any:
        if isinstance(document, dict) and document.get("object") == "response":
            return answer_of_document(document)
        return chat_answer(document)

    def stream_answer(self) -> Any:
        return _Either(ChatStream(), ResponsesStream())

    usage_from_body = CHAT.usage_from_body
    stream_usage = CHAT.stream_usage


class _Either:
    def __init__(self, *readers: Any) -> None:
        self._readers = readers

    def feed(self, event: Any) -> None:
        for reader in self._readers:
            reader.feed(event)

    def result(self) -> Any:
        for reader in self._readers:
            answer = reader.result()
            if answer is not None:
                return answer
        return None


BUILTIN = (COUNT_TOKENS, MESSAGES, CHAT, RESPONSES, EMBEDDINGS, COMPLETIONS)
ANY_OPENAI = AnyOpenAI()
OPAQUE = Opaque("openai")
OPAQUE_ANTHROPIC = Opaque("anthropic")
#: Names callers used before shapes: the family, read leniently.
ALIASES = {"openai": ANY_OPENAI, "anthropic": MESSAGES, "opaque": OPAQUE}


def plugin_shapes(package: ModuleType | None = None) -> list[Any]:
    """
    The API shapes installed packages provide as Twisted plugins.
    """
    if package is None:
        import twisted.plugins

        package = twisted.plugins
    found = []
    for shape in getPlugins(IApiShape, package):
        verifyObject(IApiShape, shape)
        found.append(shape)
    return found


class Shapes:
    """
    The shapes of one gateway, asked in priority order; the answer for a
    path is remembered, so a call costs one dict lookup.

    :param opaque: the shape of a path no shape recognises.
    """

    log = Logger()

    def __init__(self, shapes: Iterable[Any] = BUILTIN, opaque: Any = OPAQUE) -> None:
        self.shapes = sorted(shapes, key=lambda s: -s.priority)
        self.opaque = opaque
        self._names = {**ALIASES, **{s.name: s for s in self.shapes}, opaque.name: opaque}
        self._cache: dict[bytes, Any] = {}

    def for_path(self, path: bytes) -> Any:
        shape = self._cache.get(path)
        if shape is None:
            shape = next((s for s in self.shapes if s.recognises(path)), self.opaque)
            if len(self._cache) < _CACHE_SIZE:
                self._cache[path] = shape
        return shape

    def named(self, name: Any) -> Any:
        """
        The shape called ``name`` (or ``name`` itself, when it is a shape);
        None for an unknown name.
        """
        if not isinstance(name, str):
            return name
        return self._names.get(name)

    def describe(self) -> list[str]:
        return [s.name for s in self.shapes]


#: The built-in shapes, for pure code that is given a shape's name.
DEFAULT = Shapes()


def with_plugins(system: str = "openai", package: ModuleType | None = None) -> Shapes:
    """
    The built-in shapes and the installed plugins' (a plugin named like a
    built-in one replaces it); ``system`` is the family of opaque calls'
    errors.
    """
    shapes = {s.name: s for s in BUILTIN}
    for shape in plugin_shapes(package):
        Shapes.log.info("API shape {name} from a plugin", name=shape.name)
        shapes[shape.name] = shape
    opaque = OPAQUE_ANTHROPIC if system == "anthropic" else OPAQUE
    return Shapes(shapes.values(), opaque)


def shape_named(name: Any) -> Any:
    """
    A shape from its name (``openai-chat``, or a legacy ``openai`` or
    ``anthropic``), or the shape itself; the lenient OpenAI reader for an
    unknown name, as before shapes anything not Anthropic was read as OpenAI.
    """
    return DEFAULT.named(name) or ANY_OPENAI
