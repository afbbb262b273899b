"""
Tests for the admin surface's one check (llmgate.auth.AdminGuard, wired by
llmgate.app.admin_only): who may see /config and /metrics, on a real HTTP
channel over a ``StringTransport`` whose peer is the client's address.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llmgate.auth import AdminGuard, is_local_client
from llmgate.config import parse
from llmgate.service import GatewayParts

TOKEN = "client-token-0123456789"
ADMIN = "admin-token-0123456789"

LOCAL = [
    IPv4Address("TCP", "127.0.0.1", 1),
    IPv4Address("TCP", "127.8.9.10", 1),
    IPv6Address("TCP", "::1", 1),
    IPv6Address("TCP", "::ffff:127.0.0.1", 1),
    UNIXAddress(None),
    UNIXAddress(b"/run/llmgate/http.sock"),
]
REMOTE = [
    IPv4Address("TCP", "192.0.2.7", 1),
    IPv4Address("TCP", "10.0.0.1", 1),
    IPv4Address("TCP", "0.0.0.0", 1),
    IPv6Address("TCP", "2001:db8::1", 1),
    IPv6Address("TCP", "::ffff:192.0.2.7", 1),
    IPv6Address("TCP", "fe80::1%eth0", 1),
    None,
]


class LocalClientTests(SynchronousTestCase):
    def test_loopback_and_unix_socket_clients_are_local(self) -> None:
        for address in LOCAL:
            self.assertTrue(is_local_client(address), address)

    def test_other_clients_are_not(self) -> None:
        for address in REMOTE:
            self.assertFalse(is_local_client(address), address)


class AdminViewTests(SynchronousTestCase):
    def parts(self, auth: dict[str, Any] | None = None) -> GatewayParts:
        document: dict[str, Any] = {"llm": {"api_key": "sk-key-for-the-test"}}
        if auth is not None:
            document["auth"] = auth
        return GatewayParts(parse(document), MemoryReactorClock())

    def get(
        self, parts: GatewayParts, path: str, client: Any, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        transport = StringTransport(peerAddress=client)
        protocol = parts.site.buildProtocol(client)
        protocol.makeConnection(transport)
        head = f"GET {path} HTTP/1.0\r\nHost: gateway\r\n"  # 1.0: no chunking
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        protocol.dataReceived((head + "\r\n").encode())
        status_line, _, rest = transport.value().partition(b"\r\n")
        body = rest.partition(b"\r\n\r\n")[2]
        protocol.connectionLost(None)
        return int(status_line.split()[1]), json.loads(body)

    def test_with_client_auth_and_no_admin_tokens_only_local_clients_are_answered(self) -> None:
        parts = self.parts({"tokens": [TOKEN]})
        for path in ("/config", "/metrics"):
            for client in LOCAL:
                self.assertEqual(self.get(parts, path, client)[0], 200, (path, client))
            for client in REMOTE[:5]:
                status, body = self.get(parts, path, client, TOKEN)
                self.assertEqual(status, 403, (path, client))
                self.assertIn("local clients only", body["error"]["message"])
                self.assertIn("auth.admin_tokens", body["error"]["message"])
        self.assertEqual(parts.gateway.refused["forbidden_admin"], 10)
        self.assertEqual(self.get(parts, "/health", REMOTE[0])[0], 200)

    def test_admin_tokens_decide_wherever_the_client_is(self) -> None:
        parts = self.parts({"tokens": [TOKEN], "admin_tokens": [ADMIN]})
        for client in (LOCAL[0], REMOTE[0]):
            self.assertEqual(self.get(parts, "/config", client, ADMIN)[0], 200)
            self.assertEqual(self.get(parts, "/config", client)[0], 401)
            self.assertEqual(self.get(parts, "/config", client, TOKEN)[0], 401)

    def test_without_client_auth_the_views_stay_open_as_before(self) -> None:
        parts = self.parts()
        self.assertEqual(self.get(parts, "/config", REMOTE[0])[0], 200)

    def test_the_start_says_when_admin_views_are_local_only(self) -> None:
        with capturedLogs() as events:
            self.parts({"tokens": [TOKEN]})
        said = [formatEvent(e) for e in events]
        self.assertTrue(any("local clients only" in line for line in said), said)
        for auth in (None, {"tokens": [TOKEN], "admin_tokens": [ADMIN]}):
            with capturedLogs() as events:
                self.parts(auth)
            self.assertFalse(any("local clients only" in formatEvent(e) for e in events))

    def test_the_guard_reads_the_auth_config(self) -> None:
        guard = AdminGuard.from_config(parse({"auth": {"tokens": [TOKEN]}}).auth)
        self.assertTrue(guard.local_only)
        self.assertIsNotNone(guard.describe())
        guard = AdminGuard.from_config(parse({}).auth)
        self.assertFalse(guard.local_only)
        self.assertIsNone(guard.refusal(Headers(), REMOTE[0]))
