"""
The ``ui:`` section and how the view is assembled from it.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from llmgate.config import ConfigError, UIConfig, parse
from llmgate.ui.parts import NEEDS_TRACE, TURNED_OFF, ViewParts


class UIConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(parse({}).ui, UIConfig())
        self.assertIsNone(UIConfig().enabled)

    def test_values_are_read(self) -> None:
        ui = parse({"ui": {"enabled": False, "max_sessions": 5, "max_calls": 7, "watch": "poll",
                           "poll_seconds": 0.5}}).ui
        self.assertEqual(ui, UIConfig(False, 5, 7, "poll", 0.5))

    def test_bad_values_name_the_field(self) -> None:
        for document, field in (
            ({"ui": {"max_calls": 0}}, "ui.max_calls"),
            ({"ui": {"enabled": "yes"}}, "ui.enabled"),
            ({"ui": {"watch": "magic"}}, "ui.watch"),
            ({"ui": {"colour": "red"}}, "ui.colour"),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse(document)
            self.assertTrue(str(caught.exception).startswith(field), caught.exception)


class AssemblyTests(SynchronousTestCase):
    def test_without_trace_the_view_says_it_needs_it(self) -> None:
        parts = ViewParts(parse({}), MemoryReactorClock(), [])
        self.assertEqual((parts.enabled, parts.stages, parts.view.reason), (False, [], NEEDS_TRACE))

    def test_turned_off_it_adds_nothing(self) -> None:
        class Trace:
            name = "trace"
            directory = "/nonexistent"

        parts = ViewParts(parse({"ui": {"enabled": False}}), MemoryReactorClock(), [Trace()])
        self.assertEqual((parts.enabled, parts.stages, parts.view.reason), (False, [], TURNED_OFF))

    def test_asked_for_without_trace_is_a_config_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            ViewParts(parse({"ui": {"enabled": True}}), MemoryReactorClock(), [])
        self.assertTrue(str(caught.exception).startswith("ui.enabled:"))
