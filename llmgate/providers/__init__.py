"""
What differs between the LLM providers and APIs llmgate fronts.

This module: what an upstream's ``type`` decides, how a key is presented
(:class:`Provider`).  An OpenAI-compatible server (vLLM, Ollama, LiteLLM,
Azure with ``auth_header: api-key``) is the ``openai`` type with its own base
URL.

Its modules: one per API shape a client may speak (chat completions,
Responses, Anthropic messages...), each providing
:class:`llmgate.interfaces.IApiShape`; :mod:`llmgate.providers.registry`
finds a call's shape from its path.
"""

from __future__ import annotations

from typing import Mapping

import attrs

from llmgate.providers.base import error_body, error_event

#: Headers that carry a client's credential for some provider; all of them are
#: removed before an injected key is added, so no client secret goes upstream.
CREDENTIAL_HEADERS = frozenset(
    {b"authorization", b"x-api-key", b"api-key", b"proxy-authorization"}
)

ANTHROPIC_VERSION = b"2023-06-01"


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
        A JSON error body in the shape of this upstream type's APIs, for
        errors written before a call's own shape is known.
        """
        return error_body(self.name, status, message, code)

    def error_event(self, message: str, code: str | None = None) -> bytes:
        return error_event(self.name, message, code)


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
