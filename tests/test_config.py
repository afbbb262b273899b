"""
Tests for llmgate.config: precedence, environment references, validation.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from llmgate.config import ConfigError, GatewayConfig, load, parse


class ConfigFileMixin:
    def write(self, text: str) -> str:
        path = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "w") as handle:
            handle.write(text)
        return path


class DefaultsTests(SynchronousTestCase):
    def test_an_empty_document_gives_the_documented_defaults(self) -> None:
        config = parse({})
        self.assertEqual(config.server.host, "127.0.0.1")
        self.assertEqual(config.server.port, 3000)
        self.assertEqual(config.llm.type, "openai")
        self.assertIsNone(config.llm.api_key)
        self.assertEqual(config.session.max_sessions, 10_000)
        self.assertEqual(config.session.session_ttl_seconds, 3600)
        self.assertEqual(config.server.endpoint(), "tcp:port=3000:interface=127.0.0.1")

    def test_listen_replaces_host_and_port(self) -> None:
        config = parse({"server": {"listen": "tcp:port=0:interface=127.0.0.1"}})
        self.assertEqual(config.server.endpoint(), "tcp:port=0:interface=127.0.0.1")

    def test_ipv6_host_is_escaped_in_the_endpoint(self) -> None:
        config = parse({"server": {"host": "::1"}})
        self.assertEqual(config.server.endpoint(), r"tcp:port=3000:interface=\:\:1")


class PrecedenceTests(ConfigFileMixin, SynchronousTestCase):
    def test_flag_beats_environment_beats_file(self) -> None:
        path = self.write("llm:\n  base_url: http://file:1\n  type: anthropic\n")
        environ = {"LLM_BASE_URL": "http://env:2"}
        self.assertEqual(load(path, environ).llm.base_url, "http://env:2")
        self.assertEqual(load(path, environ).llm.type, "anthropic")
        flagged = load(path, environ, {"llm.base_url": "http://flag:3"})
        self.assertEqual(flagged.llm.base_url, "http://flag:3")

    def test_every_documented_environment_variable_is_read(self) -> None:
        environ = {
            "LLM_BASE_URL": "http://env:2",
            "LLM_TYPE": "anthropic",
            "LLM_API_KEY": "sk-env",
            "LOG_LEVEL": "DEBUG",
        }
        config = load(None, environ)
        self.assertEqual(config.llm.base_url, "http://env:2")
        self.assertEqual(config.llm.type, "anthropic")
        self.assertEqual(config.llm.api_key, "sk-env")
        self.assertEqual(config.logging.level, "debug")

    def test_unset_flags_do_not_override(self) -> None:
        path = self.write("server:\n  port: 4000\n")
        self.assertEqual(load(path, {}, {"server.port": None}).server.port, 4000)

    def test_port_flag_given_as_text_is_accepted(self) -> None:
        self.assertEqual(load(None, {}, {"server.port": "8080"}).server.port, 8080)

    def test_yaml_values_are_taken_from_the_environment(self) -> None:
        path = self.write('llm:\n  api_key: "${MY_KEY}"\n  base_url: "${URL:-http://x:1}"\n')
        config = load(path, {"MY_KEY": "sk-from-env"})
        self.assertEqual(config.llm.api_key, "sk-from-env")
        self.assertEqual(config.llm.base_url, "http://x:1")

    def test_an_empty_key_means_no_key(self) -> None:
        path = self.write('llm:\n  api_key: "${MY_KEY:-}"\n')
        self.assertIsNone(load(path, {}).llm.api_key)

    def test_the_shipped_config_is_valid(self) -> None:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load(os.path.join(here, "etc", "gateway.yaml"), {})
        self.assertIsInstance(config, GatewayConfig)


class ErrorTests(ConfigFileMixin, SynchronousTestCase):
    def assertRefused(self, document: dict, *fragments: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            parse(document)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_unknown_keys_are_errors_naming_the_key(self) -> None:
        self.assertRefused({"llm": {"base_ur": "http://x"}}, "llm.base_ur", "unknown key")
        self.assertRefused({"extra": 1}, "extra", "unknown key")

    def test_a_bad_url_names_the_field_and_value(self) -> None:
        self.assertRefused({"llm": {"base_url": "ftp://x"}}, "llm.base_url", "ftp://x")
        self.assertRefused({"llm": {"base_url": "not a url"}}, "llm.base_url")

    def test_an_unknown_provider_type_lists_the_known_ones(self) -> None:
        self.assertRefused({"llm": {"type": "gemini"}}, "llm.type", "gemini", "openai, anthropic")

    def test_a_port_out_of_range_is_refused(self) -> None:
        self.assertRefused({"server": {"port": 70000}}, "server.port", "70000", "range")
        self.assertRefused({"server": {"port": "http"}}, "server.port", "integer")

    def test_a_bad_endpoint_string_is_refused(self) -> None:
        self.assertRefused({"server": {"listen": "nosuch:thing"}}, "server.listen")

    def test_a_missing_variable_names_the_field(self) -> None:
        path = self.write('llm:\n  api_key: "${NOT_SET_ANYWHERE}"\n')
        with self.assertRaises(ConfigError) as caught:
            load(path, {})
        self.assertIn("llm.api_key", str(caught.exception))
        self.assertIn("NOT_SET_ANYWHERE", str(caught.exception))

    def test_a_bad_api_key_is_never_echoed(self) -> None:
        message = self.assertRefused({"llm": {"api_key": ["sk-secret-canary"]}}, "llm.api_key")
        self.assertNotIn("sk-secret-canary", message)

    def test_an_unreadable_file_is_an_error_naming_it(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load("/nonexistent/gateway.yaml", {})
        self.assertIn("/nonexistent/gateway.yaml", str(caught.exception))

    def test_invalid_yaml_is_an_error_with_its_line(self) -> None:
        path = self.write("server:\n  port: [\n")
        with self.assertRaises(ConfigError) as caught:
            load(path, {})
        self.assertIn("not valid YAML", str(caught.exception))

    def test_a_middleware_entry_needs_a_type(self) -> None:
        self.assertRefused({"middlewares": [{"enabled": True}]}, "middlewares[0].type")

    def test_reset_phrases_must_be_strings(self) -> None:
        self.assertRefused({"session": {"reset_phrases": [1]}}, "session.reset_phrases")

    def test_redacted_view_hides_the_key(self) -> None:
        config = parse({"llm": {"api_key": "sk-secret-canary"}})
        view = config.redacted()
        self.assertEqual(view["llm"]["api_key"], {"configured": True})
        self.assertNotIn("sk-secret-canary", repr(view))
        self.assertNotIn("sk-secret-canary", repr(config))
