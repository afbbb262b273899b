"""
What an exchange says in the OpenTelemetry GenAI semantic conventions: span
names and attributes, from plain values (no reactor, no SDK).

Only figures, names and ids are read: never a header, and never a body's
text unless content capture asks for the messages.  Response attributes of a
stream come from its first and last few events, so a long stream costs no
more than a short one.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from llmgate.exchange import Exchange
from llmgate.sse import ServerSentEvent

#: ``gen_ai.operation.name`` by request path (its end, so prefixes such as
#: ``/openai`` on a compatible server still match).
OPERATIONS = (
    (b"/chat/completions", "chat"),
    (b"/messages", "chat"),
    (b"/responses", "chat"),
    (b"/completions", "text_completion"),
    (b"/embeddings", "embeddings"),
)

#: Request body fields and the attribute each one fills.
REQUEST_PARAMETERS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)

#: Events read from a stream's end for its finish reasons.
TAIL_EVENTS = 4


def operation_of(path: bytes) -> str | None:
    for suffix, operation in OPERATIONS:
        if path.endswith(suffix):
            return operation
    return None


def provider_name(provider: str) -> str:
    """
    ``gen_ai.provider.name``: ``openai`` or ``anthropic`` also for API shape
    names such as ``openai-chat`` or ``anthropic-messages``.
    """
    for name in ("openai", "anthropic"):
        if provider.startswith(name):
            return name
    return provider


def span_name(operation: str | None, model: str | None, method: bytes) -> str:
    """
    ``{gen_ai.operation.name} {gen_ai.request.model}``, as the conventions
    name a GenAI span; the HTTP method for a call that is not one.
    """
    if operation is None:
        return method.decode("ascii", "replace")
    return f"{operation} {model}" if model else operation


#: The request fields of :data:`REQUEST_PARAMETERS` by name, with their rank
#: (the first field listed wins when several fill one attribute).
_PARAMETERS = {field: (name, rank) for rank, (field, name) in enumerate(REQUEST_PARAMETERS)}


def request_attributes(exchange: Exchange, operation: str | None) -> dict[str, Any]:
    """
    What the client asked for, in the conventions' names.
    """
    request = exchange.request
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": provider_name(exchange.provider),
        "http.request.method": request.method.decode("ascii", "replace"),
        "url.path": request.path.decode("utf-8", "replace"),
    }
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
    body = exchange.request_json
    if not isinstance(body, dict):
        return attributes
    model = body.get("model")
    if model.__class__ is str:
        attributes["gen_ai.request.model"] = model
    # The body's fields are fewer than the parameters looked for.
    ranks: dict[str, int] = {}
    for field, value in body.items():
        known = _PARAMETERS.get(field)
        if known is None or value.__class__ not in (int, float):
            continue
        name, rank = known
        if ranks.get(name, rank) >= rank:
            attributes[name] = value
            ranks[name] = rank
    stop = body.get("stop", body.get("stop_sequences"))
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = (stop,)
    elif isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = tuple(stop)
    return attributes


def response_attributes(exchange: Exchange) -> dict[str, Any]:
    """
    What the upstream answered: model, id, finish reasons and token usage.
    """
    attributes: dict[str, Any] = {}
    add_response_attributes(exchange, attributes)
    return attributes


def add_response_attributes(exchange: Exchange, attributes: dict[str, Any]) -> None:
    """
    :func:`response_attributes`, added to ``attributes``.
    """
    usage = exchange.usage
    if usage:
        value = usage.get("input_tokens")
        if value is not None:
            attributes["gen_ai.usage.input_tokens"] = value
        value = usage.get("output_tokens")
        if value is not None:
            attributes["gen_ai.usage.output_tokens"] = value
    model, ident, reasons = response_summary(exchange)
    if model is not None:
        attributes["gen_ai.response.model"] = model
    if ident is not None:
        attributes["gen_ai.response.id"] = ident
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons


def response_summary(exchange: Exchange) -> tuple[str | None, str | None, tuple[str, ...]]:
    """
    A successful answer's model, id and finish reasons (None, None, () for
    another).
    """
    response = exchange.response
    if response is None or not 200 <= response.status < 300:
        return None, None, ()
    if response.streaming:
        head, reasons = _stream_summary(response.events)
    else:
        document = response.document()
        head = document if document.__class__ is dict else {}
        reasons = _finish_reasons(head)
    model = head.get("model")
    ident = head.get("id")
    return (
        model if model.__class__ is str else None,
        ident if ident.__class__ is str else None,
        tuple(reasons),
    )


def _finish_reasons(document: Mapping[str, Any]) -> list[str]:
    """
    Finish reasons of a whole answer or of one stream event, any provider.
    """
    reasons = []
    choices = document.get("choices")
    if choices.__class__ is list:
        for choice in choices:
            if choice.__class__ is dict:
                reason = choice.get("finish_reason")
                if reason.__class__ is str:
                    reasons.append(reason)
    reason = document.get("stop_reason")
    if reason.__class__ is str:
        reasons.append(reason)
    delta = document.get("delta")
    if delta.__class__ is dict:
        reason = delta.get("stop_reason")
        if reason.__class__ is str:
            reasons.append(reason)
    if document.get("object") == "response":
        status = document.get("status")
        if status.__class__ is str:
            reasons.append(status)
    return reasons


def _stream_summary(events: list[ServerSentEvent]) -> tuple[dict[str, Any], list[str]]:
    """
    The answer's head (id and model, from the first event that has them) and
    its finish reasons (from the last few events).
    """
    head: dict[str, Any] = {}
    for event in events[:2]:
        document = _json(event)
        if document is None:
            continue
        # Anthropic's message_start and the Responses API's response.created
        # hold the answer's head one level down.
        inner = document.get("message") or document.get("response")
        head = inner if isinstance(inner, dict) else document
        if "id" in head or "model" in head:
            break
    reasons: list[str] = []
    for event in events[-TAIL_EVENTS:]:
        document = _json(event)
        if document is None:
            continue
        inner = document.get("response")
        reasons.extend(_finish_reasons(inner if isinstance(inner, dict) else document))
    return head, reasons


def _json(event: ServerSentEvent) -> dict[str, Any] | None:
    if not event.data.startswith("{"):
        return None
    try:
        document = event.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def input_messages(exchange: Exchange) -> list[Any]:
    """
    The conversation the client sent, system prompt first, for content
    capture.
    """
    body = exchange.request_json
    if not isinstance(body, dict):
        return []
    messages: list[Any] = []
    system = body.get("system", body.get("instructions"))
    if system is not None:
        messages.append({"role": "system", "content": system})
    for field in ("messages", "input", "prompt"):
        value = body.get(field)
        if isinstance(value, list):
            messages.extend(value)
        elif isinstance(value, str):
            messages.append({"role": "user", "content": value})
    return messages


def content_json(value: Iterable[Any] | Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
