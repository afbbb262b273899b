"""
Tests for llmgate.http.headers: which headers cross the gateway.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llmgate.http.headers import inbound_response_headers, outbound_request_headers
from llmgate.providers import ANTHROPIC, CREDENTIAL_HEADERS, OPENAI


def names(headers: Headers) -> set[bytes]:
    return {name.lower() for name, _ in headers.getAllRawHeaders()}


class OutboundTests(SynchronousTestCase):
    def client_headers(self) -> Headers:
        return Headers(
            {
                b"Host": [b"gateway:3000"],
                b"Content-Length": [b"10"],
                b"Connection": [b"keep-alive, X-Private-Hop"],
                b"X-Private-Hop": [b"1"],
                b"Keep-Alive": [b"timeout=5"],
                b"TE": [b"trailers"],
                b"Transfer-Encoding": [b"chunked"],
                b"Upgrade": [b"h2c"],
                b"Proxy-Authorization": [b"Basic abc"],
                b"Expect": [b"100-continue"],
                b"Authorization": [b"Bearer client-key"],
                b"X-Api-Key": [b"client-key"],
                b"Api-Key": [b"client-key"],
                b"X-Llmgate-Session-Id": [b"mine"],
                b"Content-Type": [b"application/json"],
                b"OpenAI-Organization": [b"org-1"],
            }
        )

    def test_hop_by_hop_and_connection_listed_headers_are_dropped(self) -> None:
        result = outbound_request_headers(self.client_headers(), None, frozenset(), {})
        dropped = {
            b"host", b"content-length", b"connection", b"x-private-hop", b"keep-alive",
            b"te", b"transfer-encoding", b"upgrade", b"proxy-authorization", b"expect",
        }
        self.assertEqual(names(result) & dropped, set())

    def test_control_headers_stay_in_the_gateway(self) -> None:
        result = outbound_request_headers(self.client_headers(), None, frozenset(), {})
        self.assertNotIn(b"x-llmgate-session-id", names(result))

    def test_end_to_end_headers_pass(self) -> None:
        result = outbound_request_headers(self.client_headers(), None, frozenset(), {})
        self.assertEqual(result.getRawHeaders(b"openai-organization"), [b"org-1"])
        self.assertEqual(result.getRawHeaders(b"content-type"), [b"application/json"])

    def test_without_a_key_the_clients_credentials_pass(self) -> None:
        result = outbound_request_headers(self.client_headers(), None, frozenset(), {})
        self.assertEqual(result.getRawHeaders(b"authorization"), [b"Bearer client-key"])
        self.assertEqual(result.getRawHeaders(b"x-api-key"), [b"client-key"])

    def test_an_injected_openai_key_replaces_every_client_credential(self) -> None:
        credential = (b"authorization", OPENAI.credential("sk-real"))
        result = outbound_request_headers(
            self.client_headers(), credential, CREDENTIAL_HEADERS, {}
        )
        self.assertEqual(result.getRawHeaders(b"authorization"), [b"Bearer sk-real"])
        self.assertFalse(result.hasHeader(b"x-api-key"))
        self.assertFalse(result.hasHeader(b"api-key"))

    def test_an_injected_anthropic_key_goes_in_x_api_key(self) -> None:
        credential = (b"x-api-key", ANTHROPIC.credential("sk-ant"))
        result = outbound_request_headers(
            self.client_headers(),
            credential,
            CREDENTIAL_HEADERS,
            ANTHROPIC.extra_request_headers(),
        )
        self.assertEqual(result.getRawHeaders(b"x-api-key"), [b"sk-ant"])
        self.assertFalse(result.hasHeader(b"authorization"))
        self.assertEqual(result.getRawHeaders(b"anthropic-version"), [b"2023-06-01"])

    def test_a_clients_anthropic_version_is_kept(self) -> None:
        headers = Headers({b"anthropic-version": [b"2024-01-01"]})
        result = outbound_request_headers(
            headers, None, frozenset(), ANTHROPIC.extra_request_headers()
        )
        self.assertEqual(result.getRawHeaders(b"anthropic-version"), [b"2024-01-01"])

    def test_accept_encoding_is_narrowed_to_what_the_gateway_can_read(self) -> None:
        headers = Headers({b"accept-encoding": [b"gzip, br;q=0.9, zstd, deflate"]})
        result = outbound_request_headers(headers, None, frozenset(), {})
        self.assertEqual(result.getRawHeaders(b"accept-encoding"), [b"gzip, deflate"])
        only_br = Headers({b"accept-encoding": [b"br"]})
        result = outbound_request_headers(only_br, None, frozenset(), {})
        self.assertEqual(result.getRawHeaders(b"accept-encoding"), [b"identity"])

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.from_regex(rb"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}\Z"),
                st.lists(st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b), min_size=1, max_size=3),
            ),
            max_size=12,
        )
    )
    def test_any_headers_never_raise_and_never_leak_credentials(self, raw) -> None:
        headers = Headers()
        for name, values in raw:
            headers.setRawHeaders(name, values)
        credential = (b"authorization", b"Bearer sk-real")
        result = outbound_request_headers(headers, credential, CREDENTIAL_HEADERS, {})
        self.assertEqual(result.getRawHeaders(b"authorization"), [b"Bearer sk-real"])
        for name in (b"x-api-key", b"api-key", b"proxy-authorization", b"connection"):
            self.assertFalse(result.hasHeader(name))


class InboundTests(SynchronousTestCase):
    def test_hop_by_hop_response_headers_are_dropped_and_the_rest_kept(self) -> None:
        headers = Headers(
            {
                b"Content-Type": [b"text/event-stream"],
                b"Content-Length": [b"5"],
                b"Content-Encoding": [b"gzip"],
                b"Transfer-Encoding": [b"chunked"],
                b"Keep-Alive": [b"timeout=5"],
                b"Set-Cookie": [b"a=b"],
                b"Retry-After": [b"3"],
            }
        )
        kept = {name.lower() for name, _ in inbound_response_headers(headers)}
        self.assertEqual(
            kept,
            {b"content-type", b"content-length", b"content-encoding", b"set-cookie", b"retry-after"},
        )
