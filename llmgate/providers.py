"""
What differs between the LLM APIs llmgate fronts: how a key is presented,
and the shape of an error, as a plain answer and inside a stream.

An OpenAI-compatible server (vLLM, Ollama, LiteLLM, Azure with
``auth_header: api-key``) is the ``openai`` provider with its own base URL.
"""

from __future__ import annotations

import json
from typing import Mapping

import attrs

#: Headers that carry a client's credential for some provider; all of them are
#: removed before an injected key is added, so no client secret goes upstream.
CREDENTIAL_HEADERS = frozenset(
    {b"authorization", b"x-api-key", b"api-key", b"proxy-authorization"}
)

ANTHROPIC_VERSION = b"2023-06-01"

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


@attrs.frozen
class Provider:
    """
    One upstream API's conventions.

    :ivar name: ``openai`` or ``anthropic``.
    :ivar auth_header: lower-case name of the header an injected key goes in.
    """

    name: str
    auth_header: bytes

    def credential(self, api_key: str) -> bytes:
        """
        The header value that presents ``api_key`` to this provider.
        """
        key = api_key.encode("utf-8")
        if self.auth_header == b"authorization":
            return b"Bearer " + key
        return key

    def extra_request_headers(self) -> Mapping[bytes, bytes]:
        """
        Headers the upstream requires and a client may leave out; added only
        where the client sent none.
        """
        if self.name == "anthropic":
            return {b"anthropic-version": ANTHROPIC_VERSION}
        return {}

    def error_body(self, status: int, message: str, code: str | None = None) -> bytes:
        """
        A JSON error body in this provider's own shape, so an SDK raises its
        usual exception with our message.

        :param status: the HTTP status the error goes out with.
        :param message: human-readable; must never contain a secret.
        :param code: a short machine-readable reason (``upstream_timeout``).
        """
        if self.name == "anthropic":
            kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
            document: dict[str, object] = {
                "type": "error",
                "error": {"type": kind, "message": message},
            }
        else:
            kind = _OPENAI_ERROR_TYPES.get(status, "api_error")
            document = {
                "error": {
                    "message": message,
                    "type": kind,
                    "param": None,
                    "code": code,
                }
            }
        return json.dumps(document).encode("utf-8")

    def error_event(self, message: str, code: str | None = None) -> bytes:
        """
        An SSE event that ends a broken stream visibly: the OpenAI SDK raises
        ``APIError`` on ``data: {"error": ...}``, the Anthropic SDK on an
        ``error`` event.
        """
        if self.name == "anthropic":
            body = self.error_body(500, message, code)
            return b"event: error\ndata: " + body + b"\n\n"
        return b"data: " + self.error_body(500, message, code) + b"\n\n"


OPENAI = Provider(name="openai", auth_header=b"authorization")
ANTHROPIC = Provider(name="anthropic", auth_header=b"x-api-key")


def provider_for(kind: str, auth_header: str | None = None) -> Provider:
    """
    The provider of a configured ``llm.type``, with its key header overridden
    by ``llm.auth_header`` when one is set.
    """
    base = {"openai": OPENAI, "anthropic": ANTHROPIC}[kind]
    if auth_header:
        return attrs.evolve(base, auth_header=auth_header.lower().encode("ascii"))
    return base
