"""
Tests for upstreams and routes: the configuration, the compiled route
table, the model read from a body, and passive health.
"""

from __future__ import annotations

import json

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from llmgate.config import ConfigError, parse
from llmgate.routing import Router, model_of
from llmgate.upstreams import Health

TWO = {
    "upstreams": {
        "openai": {"type": "openai", "base_url": "https://api.openai.com", "api_key": "sk-secret-o"},
        "anthropic": {"type": "anthropic", "api_key": "sk-secret-a"},
        "local": {"type": "openai", "base_url": "http://127.0.0.1:8000", "timeout": 120},
    },
    "routes": [
        {"path": "/v1/messages", "upstream": "anthropic"},
        {"model": "claude-*", "upstream": "anthropic"},
        {"model": "llama-*", "upstream": ["local", "openai"], "failover_on": [503]},
        {"header": {"X-Tenant": "beta"}, "upstream": "local"},
        {"upstream": "openai"},
    ],
}


def _router(document: dict) -> Router:
    return Router(parse(document).routes)


class ConfigTests(SynchronousTestCase):
    def test_llm_alone_is_one_upstream_named_default_and_one_catch_all_route(self) -> None:
        config = parse({"llm": {"type": "anthropic"}})
        self.assertEqual(list(config.upstreams), ["default"])
        self.assertEqual(config.upstreams["default"].type, "anthropic")
        self.assertIs(config.llm, config.upstreams["default"])
        self.assertEqual([r.upstreams for r in config.routes], [("default",)])

    def test_upstreams_and_routes_are_read_in_order(self) -> None:
        config = parse(TWO)
        self.assertEqual(list(config.upstreams), ["openai", "anthropic", "local"])
        self.assertEqual(config.upstreams["local"].timeout, 120)
        self.assertEqual(config.upstreams["anthropic"].base_url, "https://api.anthropic.com")
        self.assertEqual(config.routes[2].upstreams, ("local", "openai"))
        self.assertEqual(config.routes[2].failover_on, frozenset({503}))
        self.assertEqual(config.routes[0].failover_on, frozenset({429, 500, 502, 503, 504}))
        self.assertEqual(config.routes[3].header, (("x-tenant", "beta"),))
        # The default upstream is the catch-all route's.
        self.assertEqual(config.llm.base_url, "https://api.openai.com")

    def test_llm_with_upstreams_is_a_one_line_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse({**TWO, "llm": {"type": "openai"}})
        self.assertIn("llm: cannot be combined with upstreams", str(caught.exception))

    def test_a_route_naming_an_unknown_upstream_is_refused_with_the_known_ones(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse({**TWO, "routes": [{"upstream": ["local", "azure"]}]})
        message = str(caught.exception)
        self.assertIn("routes[0].upstream: 'azure' is not a configured upstream", message)
        self.assertIn("openai, anthropic, local", message)

    def test_bad_route_fields_are_named(self) -> None:
        for route, field in (
            ({"upstream": "openai", "path": "v1"}, "routes[0].path"),
            ({"upstream": "openai", "failover_on": ["5xx"]}, "routes[0].failover_on"),
            ({"upstream": "openai", "header": {"x": 1}}, "routes[0].header"),
            ({"upstream": "openai", "hosts": "x"}, "routes[0].hosts"),
            ({"path": "/v1"}, "routes[0].upstream"),
            ({"upstream": ["openai", "openai"]}, "routes[0].upstream"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse({**TWO, "routes": [route]})
            self.assertTrue(str(caught.exception).startswith(field), str(caught.exception))

    def test_several_upstreams_need_routes_and_a_bad_upstream_is_named(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse({"upstreams": TWO["upstreams"]})
        self.assertIn("routes: is required", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            parse({"upstreams": {"x": {"type": "gemini"}}})
        self.assertIn("upstreams.x.type", str(caught.exception))
        config = parse({"upstreams": {"only": {"type": "openai"}}})
        self.assertEqual(config.routes[0].upstreams, ("only",))

    def test_health_settings_are_checked(self) -> None:
        config = parse({"llm": {"eject_after": 2, "cooldown": 5, "max_cooldown": 60}})
        self.assertEqual((config.llm.eject_after, config.llm.cooldown), (2, 5.0))
        with self.assertRaises(ConfigError) as caught:
            parse({"llm": {"eject_after": -1}})
        self.assertIn("llm.eject_after", str(caught.exception))

    def test_the_redacted_view_shows_upstreams_and_routes_but_no_key(self) -> None:
        view = parse({**TWO, "server": {"allow_open_relay": True}}).redacted()
        text = json.dumps(view)
        self.assertNotIn("sk-secret", text)
        self.assertEqual(view["upstreams"]["openai"]["api_key"], {"configured": True})
        self.assertEqual(view["upstreams"]["local"]["api_key"], {"configured": False})
        self.assertEqual(view["routes"][2]["upstreams"], ["local", "openai"])
        self.assertEqual(view["routes"][1]["describe"], "model claude-* -> anthropic")

    def test_an_injected_key_on_any_upstream_is_an_open_relay_beyond_loopback(self) -> None:
        document = {
            "server": {"host": "0.0.0.0"},
            "upstreams": {"a": {}, "b": {"api_key": "sk-x"}},
            "routes": [{"upstream": "a"}],
        }
        with self.assertRaises(ConfigError):
            parse(document)

    def test_environment_llm_variables_do_not_touch_named_upstreams(self) -> None:
        import os
        import tempfile

        from llmgate.config import load

        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            json.dump(TWO, handle)
        self.addCleanup(os.unlink, handle.name)
        config = load(handle.name, {"LLM_API_KEY": "sk-env", "LLM_BASE_URL": "http://x"})
        self.assertEqual(config.upstreams["openai"].api_key, "sk-secret-o")


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.router = _router(TWO)
        self.asked = 0

    def match(self, path: bytes, model: str | None = None, **headers: str) -> str | None:
        def read_model() -> bytes | None:
            self.asked += 1
            return None if model is None else model.encode()

        raw = Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()})
        route = self.router.match(path, raw, read_model)
        return None if route is None else "+".join(route.config.upstreams)

    def test_a_path_prefix_matches_without_reading_the_model(self) -> None:
        self.assertEqual(self.match(b"/v1/messages", "gpt-4o"), "anthropic")
        self.assertEqual(self.match(b"/v1/messages/count_tokens", "gpt-4o"), "anthropic")
        self.assertEqual(self.asked, 0)

    def test_a_model_glob_matches_and_the_model_is_read_once(self) -> None:
        self.assertEqual(self.match(b"/v1/chat/completions", "claude-sonnet-4-5"), "anthropic")
        self.assertEqual(self.match(b"/v1/chat/completions", "llama-3-70b"), "local+openai")
        self.assertEqual(self.match(b"/v1/chat/completions", "gpt-4o"), "openai")
        self.assertEqual(self.asked, 3)

    def test_a_header_matches_by_exact_value(self) -> None:
        self.assertEqual(self.match(b"/v1/chat/completions", "gpt", x_tenant="beta"), "local")
        self.assertEqual(self.match(b"/v1/chat/completions", "gpt", x_tenant="Beta"), "openai")

    def test_a_route_with_several_fields_needs_them_all(self) -> None:
        router = _router(
            {
                **TWO,
                "routes": [
                    {"path": "/v1/chat", "header": {"x-tenant": "beta"}, "model": "gpt-*", "upstream": "local"},
                    {"path": "/v1/chat", "model": "gpt-*", "upstream": "anthropic"},
                    {"upstream": "openai"},
                ],
            }
        )

        def route(path: bytes, model: str, tenant: str | None = None) -> str:
            raw = Headers({b"x-tenant": [tenant.encode()]} if tenant else {})
            return router.match(path, raw, lambda: model.encode()).config.upstreams[0]

        for _ in range(2):  # the second time from the kept plans and globs
            self.assertEqual(route(b"/v1/chat/completions", "gpt-4o", "beta"), "local")
            self.assertEqual(route(b"/v1/chat/completions", "gpt-4o", "alpha"), "anthropic")
            self.assertEqual(route(b"/v1/chat/completions", "o3", "beta"), "openai")
            self.assertEqual(route(b"/v1/responses", "gpt-4o", "beta"), "openai")

    def test_no_match_is_none(self) -> None:
        router = _router({**TWO, "routes": [{"path": "/v1/messages", "upstream": "anthropic"}]})
        self.assertIsNone(router.match(b"/v1/chat/completions", Headers(), lambda: None))

    def test_the_table_lists_routes_in_order(self) -> None:
        self.assertEqual(
            self.router.table(),
            [
                "1. path /v1/messages* -> anthropic",
                "2. model claude-* -> anthropic",
                "3. model llama-* -> local then openai",
                "4. header x-tenant: beta -> local",
                "5. any call -> openai",
            ],
        )


class ModelTests(SynchronousTestCase):
    def test_the_model_is_found_without_parsing(self) -> None:
        self.assertEqual(model_of(b'{"model": "gpt-4o", "messages": []}'), "gpt-4o")
        self.assertEqual(model_of(b'{"messages":[],"model":"claude-x"}'), "claude-x")
        self.assertIsNone(model_of(b'{"messages": []}'))
        self.assertIsNone(model_of(b"not json"))

    def test_a_model_named_in_the_text_is_not_taken(self) -> None:
        body = json.dumps(
            {"messages": [{"role": "user", "content": 'say "model": "evil"'}], "model": "good"}
        ).encode()
        self.assertEqual(model_of(body), "good")

    def test_a_nested_model_makes_it_parse_and_take_the_top_level_one(self) -> None:
        body = json.dumps({"metadata": {"model": "nested"}, "model": "top"}).encode()
        self.assertEqual(model_of(body), "top")
        body = json.dumps({"model": "top", "tools": [{"parameters": {"model": {}}}]}).encode()
        self.assertEqual(model_of(body), "top")
        # A model with an escape in it is left to the parse.
        body = json.dumps({"model": "a\\\"b"}).encode()
        self.assertEqual(model_of(body, parse=lambda: {"model": "parsed"}), "parsed")
        self.assertEqual(model_of(b'{"model": 4}'), None)

    def test_an_already_parsed_body_is_used(self) -> None:
        self.assertEqual(model_of(b"", {"model": "parsed"}), "parsed")
        self.assertIsNone(model_of(b"", {"model": 3}))


class HealthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.health = Health(self.clock, eject_after=3, cooldown=10, max_cooldown=25)

    def test_consecutive_failures_eject_for_a_cooldown(self) -> None:
        self.assertFalse(self.health.failed())
        self.health.failed()
        self.assertFalse(self.health.ejected())
        self.assertTrue(self.health.failed())
        self.assertTrue(self.health.ejected())
        self.assertEqual(self.health.state()["healthy"], False)
        self.clock.advance(10)
        self.assertFalse(self.health.ejected())

    def test_a_success_between_failures_resets_the_count(self) -> None:
        self.health.failed()
        self.health.failed()
        self.health.succeeded()
        self.health.failed()
        self.assertFalse(self.health.ejected())

    def test_a_failure_after_the_cooldown_ejects_again_for_twice_as_long_up_to_the_cap(self) -> None:
        for _ in range(3):
            self.health.failed()
        self.clock.advance(10)
        self.assertTrue(self.health.failed())  # on probation: one failure is enough
        self.clock.advance(19.9)
        self.assertTrue(self.health.ejected())
        self.clock.advance(0.1)
        self.assertFalse(self.health.ejected())
        self.health.failed()
        self.clock.advance(24.9)
        self.assertTrue(self.health.ejected())  # capped at 25, not 40
        self.clock.advance(0.1)
        self.assertFalse(self.health.ejected())
        self.health.succeeded()
        self.health.failed()
        self.assertFalse(self.health.ejected())
        self.assertEqual(self.health.state()["ejections"], 3)

    def test_eject_after_zero_never_ejects(self) -> None:
        health = Health(self.clock, eject_after=0, cooldown=10, max_cooldown=25)
        for _ in range(100):
            health.failed()
        self.assertFalse(health.ejected())


class ValidateConfigTests(SynchronousTestCase):
    def test_the_summary_lists_upstreams_and_the_route_table_without_keys(self) -> None:
        from llmgate.tap import summary

        text = summary(parse({**TWO, "server": {"allow_open_relay": True}}))
        self.assertIn("  upstream anthropic: https://api.anthropic.com (anthropic, key configured)\n", text)
        self.assertIn("  upstream local: http://127.0.0.1:8000 (openai, key from clients)\n", text)
        self.assertIn("  route 3. model llama-* -> local then openai\n", text)
        self.assertNotIn("sk-secret", text)
