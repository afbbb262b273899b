"""
Every private name of Twisted that llmgate's fast paths use is still there,
and each fast path falls back to Twisted's own when one is missing.

The first test fails loudly on a Twisted upgrade that renames any of them:
then check the fast path against the new Twisted, and raise the upper bound
in setup.cfg.
"""

from __future__ import annotations


from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmgate.http import twisted_names
from llmgate.http.parser import ResponseParser
from llmgate.http.server import GatewaySite
from llmgate.providers import OPENAI
from tests.test_server import REQUESTS, Echo, connect


class PrivateNamesTests(SynchronousTestCase):
    def test_every_private_name_exists_in_this_twisted(self) -> None:
        self.assertEqual(
            twisted_names.MISSING,
            {"one-step request parser": [], "send at once": [], "response heads": []},
        )
        self.assertTrue(twisted_names.ONE_STEP_PARSER)
        self.assertTrue(twisted_names.SEND_AT_ONCE)
        self.assertTrue(twisted_names.FAST_HEADERS)

    def test_the_bound_in_setup_cfg_covers_this_twisted(self) -> None:
        from importlib.metadata import version

        from packaging.specifiers import SpecifierSet

        with open(__file__.rsplit("/tests/", 1)[0] + "/setup.cfg", encoding="utf-8") as handle:
            line = next(line for line in handle if line.strip().startswith("twisted["))
        specifier = SpecifierSet(line.split("]", 1)[1].strip())
        self.assertIn(version("twisted"), specifier)
        self.assertTrue(any(spec.operator in ("<", "<=") for spec in specifier), line)


class FallbackTests(SynchronousTestCase):
    """
    With a name missing, the fast path steps aside: twisted.web parses every
    request, and answers come out the same.
    """

    def answers(self) -> dict[str, bytes]:
        result = {}
        for name, data in REQUESTS.items():
            site = GatewaySite(Echo(), provider=OPENAI, max_request_body=100, clock=Clock())
            protocol, transport = connect(site)
            seen = []
            line_received = protocol.lineReceived

            def count(line: bytes, seen: list[bytes] = seen, parse=line_received) -> None:
                seen.append(line)
                parse(line)

            protocol.lineReceived = count
            protocol.dataReceived(data)
            protocol.connectionLost(None)
            result[name] = (transport.value(), bool(seen))
        return result

    def test_the_request_parser_falls_back_to_twisted_web(self) -> None:
        fast = self.answers()
        self.patch(twisted_names, "ONE_STEP_PARSER", False)
        slow = self.answers()
        for name in REQUESTS:
            self.assertEqual(fast[name][0], slow[name][0], name)
            # Every request went through twisted.web's line parser.
            self.assertTrue(slow[name][1] or not REQUESTS[name].strip(), name)
        self.assertFalse(all(seen for _, seen in fast.values()))

    def test_response_heads_fall_back_to_the_public_headers_api(self) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\n"
            b"x-a: 2\r\nContent-Length: 2\r\n\r\n{}"
        )

        class Sink:
            def head_received(self, minor, code, phrase, headers, length):
                self.head = (code, phrase, list(headers.getAllRawHeaders()), length)

            def body_ended(self, clean):
                self.clean = clean

        def parse() -> Sink:
            sink = Sink()
            parser = ResponseParser(sink)
            parser.expect(b"GET")
            parser.feed(head)
            return sink

        fast = parse()
        self.patch(twisted_names, "FAST_HEADERS", False)
        slow = parse()
        self.assertEqual(fast.head, slow.head)
        self.assertEqual(dict(fast.head[2])[b"X-A"], [b"1", b"2"])
        self.assertTrue(slow.clean)


