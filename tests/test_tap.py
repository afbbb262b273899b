"""
Tests for the command line: ``twistd llmgate`` and ``python -m llmgate``,
run as real processes, since exit codes and output are the contract.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import zipfile

from twisted.trial.unittest import SynchronousTestCase

import attrs
import yaml

from llmgate import config as configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd")]
MODULE = [sys.executable, "-m", "llmgate"]


def run(
    *argv: str, env: dict[str, str] | None = None, cwd: str = ROOT
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "LOG_LEVEL"))}
    environ.update(env or {})
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=60, cwd=cwd, env=environ
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CommandLineTests(SynchronousTestCase):
    def test_twistd_lists_the_llmgate_plugin(self) -> None:
        # From elsewhere than the checkout: the install, not the current
        # directory, must put twisted/plugins/llmgate.py in sight.
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        result = run(*TWISTD, "--help", cwd=elsewhere)
        self.assertEqual(result.returncode, 0)
        self.assertIn("llmgate", result.stdout)

    def test_a_bad_flag_is_one_line_naming_it_and_help(self) -> None:
        cases = [
            (["--bogus"], "--bogus"),
            (["-x"], "-x"),
            (["--config"], "--config"),
            (["surplus"], "arguments"),
        ]
        for command, help_command in (
            (TWISTD + ["llmgate"], "twistd llmgate --help"),
            (MODULE, "python -m llmgate --help"),
        ):
            for flags, named in cases:
                result = run(*command, *flags)
                self.assertEqual(result.returncode, 2, (command, flags, result.stderr))
                self.assertEqual(result.stdout, "")
                self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
                self.assertIn(named, result.stderr)
                self.assertIn(help_command, result.stderr)

    def test_help_still_lists_the_options(self) -> None:
        for command in (TWISTD + ["llmgate"], MODULE):
            result = run(*command, "--help")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("--generate-config", result.stdout)

    def test_a_generated_config_means_what_no_config_means(self) -> None:
        result = run(*MODULE, "--generate-config", "-")
        self.assertEqual(result.returncode, 0, result.stderr)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as handle:
            handle.write(result.stdout)
        environments: list[dict[str, str]] = [
            {},
            {"LLM_API_KEY": "sk-test-key"},
            {"LLM_TYPE": "anthropic"},
            {"LLM_BASE_URL": "http://127.0.0.1:8000", "LOG_LEVEL": "debug"},
        ]
        for environ in environments:
            generated = configuration.load(path, environ)
            empty = configuration.load(None, environ)
            self.assertEqual(attrs.evolve(generated, source=None), empty, environ)

    def test_the_development_install_is_a_plain_pth_and_warns_of_nothing(self) -> None:
        """
        ``pip install -e .`` builds this editable wheel: it must be a .pth
        naming the checkout (what Twisted's plugin scan walks), built
        without setuptools' transitional ``compat`` mode or its warnings.
        """
        copy = os.path.abspath(self.mktemp())
        for name in ("setup.cfg", "pyproject.toml", "README.md", "llmgate/__init__.py",
                     "twisted/plugins/llmgate.py"):
            os.makedirs(os.path.dirname(os.path.join(copy, name)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), os.path.join(copy, name))
        result = run(
            sys.executable, "-W", "always", "-c",
            "from setuptools import build_meta; print(build_meta.build_editable('dist'))",
            cwd=copy,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Warning", result.stderr)
        wheel = os.path.join(copy, "dist", result.stdout.strip().splitlines()[-1])
        with zipfile.ZipFile(wheel) as archive:
            pths = [n for n in archive.namelist() if n.endswith(".pth")]
            self.assertEqual(len(pths), 1, archive.namelist())
            self.assertEqual(archive.read(pths[0]).decode().strip(), copy)

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
        # Its config traces to ./traces: run it where that may be written.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        process = subprocess.Popen(
            [*TWISTD, "--nodaemon", "--pidfile=", "llmgate", "--config",
             os.path.join(ROOT, "etc", "gateway.yaml"), "--port", str(port)],
            cwd=directory, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
