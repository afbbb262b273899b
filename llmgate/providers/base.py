"""
What every API shape shares: the error bodies of each family (OpenAI and
Anthropic), and :class:`Shape`, a base whose defaults read nothing, for a
shape that overrides only what its API has.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from llmgate.sse import ServerSentEvent
from llmgate.usage import StreamUsage, any_usage

_OPENAI_ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}

_ANTHROPIC_ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_body(system: str, status: int, message: str, code: str | None = None) -> bytes:
    """
    A JSON error body in the shape of ``system``'s APIs (``anthropic``;
    anything else is OpenAI's), so an SDK raises its usual exception.

    :param message: human-readable; must never contain a secret.
    :param code: a short machine-readable reason (``upstream_timeout``).
    """
    if system == "anthropic":
        document: dict[str, object] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message},
        }
    else:
        document = {
            "error": {
                "message": message,
                "type": _OPENAI_ERROR_TYPES.get(status, "api_error"),
                "param": None,
                "code": code,
            }
        }
    return json.dumps(document).encode("utf-8")


def error_event(system: str, message: str, code: str | None = None) -> bytes:
    """
    An SSE event that ends a broken stream visibly: the OpenAI SDK raises
    ``APIError`` on ``data: {"error": ...}``, the Anthropic SDK on an
    ``error`` event.
    """
    body = error_body(system, 500, message, code)
    if system == "anthropic":
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


def role_of(value: Any) -> str:
    return value if isinstance(value, str) and value else "assistant"


class NoAnswer:
    """
    The stream reassembler of a shape that has no answer to reassemble.
    """

    def feed(self, event: ServerSentEvent) -> None:
        pass

    def result(self) -> None:
        return None


class Shape:
    """
    Defaults for :class:`llmgate.interfaces.IApiShape`: no history, no
    answer, usage read in whichever known shape it comes, errors in the
    family's shape.  Subclasses set ``name``, ``system``, ``suffixes``.
    """

    name = "opaque"
    system = "openai"
    priority = 0
    #: Path endings recognised (bytes); the default recognises none.
    suffixes: tuple[bytes, ...] = ()

    def recognises(self, path: bytes) -> bool:
        return path.endswith(self.suffixes)

    def history(self, body: Any) -> Any:
        return None

    def answer_from_body(self, document: Any) -> dict[str, Any] | None:
        return None

    def stream_answer(self) -> Any:
        return NoAnswer()

    def stream_ended(self, event: ServerSentEvent) -> bool:
        return False

    def usage_from_body(self, document: Any) -> Any:
        return any_usage(document)

    def stream_usage(self) -> Any:
        return StreamUsage(None)

    def error_body(self, status: int, message: str, code: str | None = None) -> bytes:
        return error_body(self.system, status, message, code)

    def error_event(self, message: str, code: str | None = None) -> bytes:
        return error_event(self.system, message, code)

    def __repr__(self) -> str:
        return f"<API shape {self.name}>"
