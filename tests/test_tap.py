"""
Tests for the command line: ``twistd llmgate`` and ``python -m llmgate``,
run as real processes, since exit codes and output are the contract.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd")]
MODULE = [sys.executable, "-m", "llmgate"]


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "LOG_LEVEL"))}
    environ.update(env or {})
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=60, cwd=ROOT, env=environ
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CommandLineTests(SynchronousTestCase):
    def test_twistd_lists_the_llmgate_plugin(self) -> None:
        result = run(*TWISTD, "--help")
        self.assertEqual(result.returncode, 0)
        self.assertIn("llmgate", result.stdout)

    def test_generate_config_writes_a_valid_commented_example(self) -> None:
        for command in (TWISTD + ["llmgate"], MODULE):
            path = os.path.abspath(self.mktemp())
            result = run(*command, "--generate-config", path)
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(path) as handle:
                text = handle.read()
            self.assertIn("# llmgate configuration", text)
            self.assertIn("middlewares", yaml.safe_load(text))
            checked = run(*command, "--validate-config", path)
            self.assertEqual(checked.returncode, 0, checked.stderr)
            self.assertIn("configuration OK", checked.stdout)

    def test_generate_config_does_not_overwrite(self) -> None:
        path = os.path.abspath(self.mktemp())
        open(path, "w").close()
        result = run(*MODULE, "--generate-config", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(os.path.getsize(path), 0)

    def test_validate_config_names_the_bad_field_and_value(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write("llm:\n  type: gemini\n")
        for command in (TWISTD + ["llmgate"], MODULE):
            result = run(*command, "--validate-config", path)
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual(result.stderr.strip().count("\n"), 0, result.stderr)
            self.assertIn("llm.type", result.stderr)
            self.assertIn("gemini", result.stderr)
            self.assertNotIn("Traceback", result.stderr)

    def test_a_bad_configuration_at_start_exits_with_one_line(self) -> None:
        cases = [
            (["--base-url", "not-a-url"], "llm.base_url"),
            (["--type", "gemini"], "llm.type"),
            (["--port", "70000"], "server.port"),
            (["--config", "/nonexistent/gateway.yaml"], "/nonexistent/gateway.yaml"),
        ]
        for flags, fragment in cases:
            result = run(*TWISTD, "--nodaemon", "--pidfile=", "llmgate", *flags)
            self.assertNotEqual(result.returncode, 0, flags)
            self.assertIn(fragment, result.stderr)
            self.assertEqual(result.stderr.strip().count("\n"), 0, result.stderr)
            self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_an_unknown_middleware_lists_the_known_ones(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write("middlewares:\n  - type: nosuch\n")
        result = run(*MODULE, "--validate-config", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("middlewares[0].type", result.stderr)
        self.assertIn("known:", result.stderr)


class DaemonTests(SynchronousTestCase):
    def test_the_daemon_serves_health_and_stops_cleanly_on_sigterm(self) -> None:
        port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
        process = subprocess.Popen(
            [*TWISTD, "--nodaemon", "--pidfile=", "llmgate", "--config",
             "etc/gateway.yaml", "--port", str(port)],
            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if "listening on" in line:
                    break
            else:
                self.fail("the daemon never said it was listening")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
                self.assertEqual(answer.status, 200)
                self.assertIn(b'"healthy"', answer.read())
            process.send_signal(signal.SIGTERM)
            self.assertEqual(process.wait(timeout=30), 0)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
