"""
End-to-end tests with the official ``openai`` and ``anthropic`` Python SDKs as
the clients: a real gateway on loopback in front of the fake upstream.

The SDKs block, so every call runs in a thread (``deferToThread``) while the
reactor keeps serving the gateway and the upstream; the async clients run
their own event loop (``asyncio.run``) in such a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import anthropic
import openai
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

#: Bound on every SDK call, so a broken gateway fails a test, not the run.
TIMEOUT = 10.0


def in_thread(fn: Callable[[], Any]) -> Any:
    """
    Run a blocking SDK call off the reactor thread; bounded.
    """
    return deferToThread(fn).addTimeout(TIMEOUT * 2, reactor)


def last_user_text(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content)
    return content


@pytest.fixture
def reply(upstream: Any) -> Callable[[str], str]:
    """
    Make the fake upstream answer with a reply that quotes the prompt, so a
    test also sees that its request body went through; returns the expected
    reply for a prompt.
    """

    def expected(prompt: str) -> str:
        return f"You said {prompt} and the fake upstream agrees"

    upstream.resource.reply = lambda body: expected(last_user_text(body))
    return expected


def openai_client(base: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base + "/v1", api_key="sk-client", max_retries=0, timeout=TIMEOUT, **kwargs
    )


def anthropic_client(base: str, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=base, api_key="sk-ant-client", max_retries=0, timeout=TIMEOUT, **kwargs
    )


def ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# -- OpenAI ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_openai_sdk_plain_chat_completion_returns_the_upstream_reply(make_gateway, upstream, reply):
    gateway = make_gateway(llm__api_key="sk-gateway")

    def call() -> Any:
        with openai_client(gateway.url) as client:
            return client.chat.completions.create(model="gpt-e2e", messages=ask("plain"))

    completion = yield in_thread(call)
    assert completion.choices[0].message.content == reply("plain")
    assert completion.model == "gpt-e2e"
    assert completion.usage.total_tokens == 18
    seen = upstream.resource.seen[-1]
    assert seen.uri == b"/v1/chat/completions"
    assert seen.headers[b"authorization"] == [b"Bearer sk-gateway"]


@pytest_twisted.inlineCallbacks
def test_openai_sdk_streamed_chat_completion_reassembles_the_reply(make_gateway, reply):
    gateway = make_gateway()

    def call() -> Any:
        with openai_client(gateway.url) as client:
            stream = client.chat.completions.create(
                model="gpt-e2e",
                messages=ask("streamed"),
                stream=True,
                stream_options={"include_usage": True},
            )
            return list(stream)

    chunks = yield in_thread(call)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply("streamed")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18
    assert len(chunks) > 3


@pytest_twisted.inlineCallbacks
def test_openai_sdk_stream_helper_yields_deltas_and_the_final_completion(make_gateway, reply):
    gateway = make_gateway()

    def call() -> Any:
        with openai_client(gateway.url) as client:
            with client.chat.completions.stream(model="gpt-e2e", messages=ask("helper")) as stream:
                deltas = [event.delta for event in stream if event.type == "content.delta"]
                return deltas, stream.get_final_completion()

    deltas, final = yield in_thread(call)
    assert "".join(deltas) == reply("helper")
    assert len(deltas) > 1
    assert final.choices[0].message.content == reply("helper")
    assert final.choices[0].finish_reason == "stop"


@pytest_twisted.inlineCallbacks
def test_async_openai_sdk_plain_and_streamed_calls_return_the_upstream_reply(make_gateway, reply):
    gateway = make_gateway()

    async def calls() -> Any:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key="sk-client", max_retries=0, timeout=TIMEOUT
        ) as client:
            plain = await client.chat.completions.create(model="gpt-e2e", messages=ask("async plain"))
            stream = await client.chat.completions.create(
                model="gpt-e2e", messages=ask("async stream"), stream=True
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return plain, "".join(parts)

    plain, streamed = yield in_thread(lambda: asyncio.run(calls()))
    assert plain.choices[0].message.content == reply("async plain")
    assert streamed == reply("async stream")


@pytest_twisted.inlineCallbacks
def test_openai_sdk_raises_api_error_when_the_upstream_dies_mid_stream(make_gateway):
    gateway = make_gateway()
    received: list[str] = []

    def call() -> Any:
        # The SDK's path becomes /die/v1/chat/completions: the fake upstream
        # sends three chunks there, then drops the connection.
        with openai.OpenAI(
            base_url=gateway.url + "/die/v1", api_key="sk-client", max_retries=0, timeout=TIMEOUT
        ) as client:
            stream = client.chat.completions.create(model="gpt-e2e", messages=ask("x"), stream=True)
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as raised:
        yield in_thread(call)
    assert not isinstance(raised.value, openai.APIConnectionError)
    assert "".join(received) == "this answer"
    assert raised.value.message
    yield check_openai_gateway_still_works(gateway)


@pytest_twisted.inlineCallbacks
def test_openai_sdk_raises_api_status_error_502_when_the_upstream_refuses(make_gateway):
    from tests.test_e2e_relay import closed_port

    port = yield closed_port()
    gateway = make_gateway(llm__base_url=f"http://127.0.0.1:{port}")

    def call() -> Any:
        with openai_client(gateway.url) as client:
            return client.chat.completions.create(model="gpt-e2e", messages=ask("x"))

    with pytest.raises(openai.APIStatusError) as raised:
        yield in_thread(call)
    assert raised.value.status_code == 502
    assert isinstance(raised.value, openai.InternalServerError)
    assert "upstream" in raised.value.message


@inlineCallbacks
def check_openai_gateway_still_works(gateway: Any) -> Any:
    def call() -> Any:
        with openai_client(gateway.url) as client:
            return client.chat.completions.create(model="gpt-e2e", messages=ask("again"))

    completion = yield in_thread(call)
    assert completion.choices[0].message.content == "Hello from the fake upstream"


# -- Anthropic ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_plain_message_returns_the_upstream_reply(make_gateway, upstream, reply):
    gateway = make_gateway(llm__type="anthropic", llm__api_key="sk-ant-gateway")

    def call() -> Any:
        with anthropic_client(gateway.url) as client:
            return client.messages.create(model="claude-e2e", max_tokens=64, messages=ask("plain"))

    message = yield in_thread(call)
    assert [block.text for block in message.content] == [reply("plain")]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 9
    seen = upstream.resource.seen[-1]
    assert seen.uri == b"/v1/messages"
    assert seen.headers[b"x-api-key"] == [b"sk-ant-gateway"]
    assert b"authorization" not in seen.headers


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_streamed_message_reassembles_the_reply(make_gateway, reply):
    gateway = make_gateway(llm__type="anthropic")

    def call() -> Any:
        with anthropic_client(gateway.url) as client:
            stream = client.messages.create(
                model="claude-e2e", max_tokens=64, messages=ask("streamed"), stream=True
            )
            return list(stream)

    events = yield in_thread(call)
    text = "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == reply("streamed")
    assert events[0].type == "message_start"
    assert events[-1].type == "message_stop"


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_stream_helper_yields_text_and_the_final_message(make_gateway, reply):
    gateway = make_gateway(llm__type="anthropic")

    def call() -> Any:
        with anthropic_client(gateway.url) as client:
            with client.messages.stream(
                model="claude-e2e", max_tokens=64, messages=ask("helper")
            ) as stream:
                pieces = list(stream.text_stream)
                return pieces, stream.get_final_message()

    pieces, final = yield in_thread(call)
    assert "".join(pieces) == reply("helper")
    assert len(pieces) > 1
    assert [block.text for block in final.content] == [reply("helper")]
    assert final.stop_reason == "end_turn"


@pytest_twisted.inlineCallbacks
def test_async_anthropic_sdk_plain_and_streamed_calls_return_the_upstream_reply(make_gateway, reply):
    gateway = make_gateway(llm__type="anthropic")

    async def calls() -> Any:
        async with anthropic.AsyncAnthropic(
            base_url=gateway.url, api_key="sk-ant-client", max_retries=0, timeout=TIMEOUT
        ) as client:
            plain = await client.messages.create(
                model="claude-e2e", max_tokens=64, messages=ask("async plain")
            )
            async with client.messages.stream(
                model="claude-e2e", max_tokens=64, messages=ask("async stream")
            ) as stream:
                pieces = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
            return plain, "".join(pieces), final

    plain, streamed, final = yield in_thread(lambda: asyncio.run(calls()))
    assert plain.content[0].text == reply("async plain")
    assert streamed == reply("async stream")
    assert final.content[0].text == reply("async stream")


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_raises_an_api_error_when_the_upstream_dies_mid_stream(make_gateway):
    gateway = make_gateway(llm__type="anthropic")
    received: list[str] = []

    def call() -> Any:
        # The SDK's path becomes /die/v1/messages: the fake upstream sends
        # the first text delta there, then drops the connection.
        with anthropic_client(gateway.url + "/die") as client:
            with client.messages.stream(model="claude-e2e", max_tokens=64, messages=ask("x")) as stream:
                for text in stream.text_stream:
                    received.append(text)

    with pytest.raises(anthropic.APIStatusError) as raised:
        yield in_thread(call)
    assert isinstance(raised.value, anthropic.APIError)
    assert not isinstance(raised.value, anthropic.APIConnectionError)
    assert received == ["this"]
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["message"]

    def again() -> Any:
        with anthropic_client(gateway.url) as client:
            return client.messages.create(model="claude-e2e", max_tokens=64, messages=ask("again"))

    message = yield in_thread(again)
    assert message.content[0].text == "Hello from the fake upstream"


@pytest_twisted.inlineCallbacks
def test_anthropic_sdk_raises_internal_server_error_502_when_the_upstream_refuses(make_gateway):
    from tests.test_e2e_relay import closed_port

    port = yield closed_port()
    gateway = make_gateway(llm__type="anthropic", llm__base_url=f"http://127.0.0.1:{port}")

    def call() -> Any:
        with anthropic_client(gateway.url) as client:
            return client.messages.create(model="claude-e2e", max_tokens=64, messages=ask("x"))

    with pytest.raises(anthropic.APIStatusError) as raised:
        yield in_thread(call)
    assert raised.value.status_code == 502
    assert isinstance(raised.value, anthropic.InternalServerError)
    assert raised.value.body["type"] == "error"
    assert "upstream" in raised.value.body["error"]["message"]
