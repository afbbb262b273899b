"""
What an operator runs to install llmgate, run as they would: the Makefile's
virtualenv handling, and the systemd install steps of docs/operations.md
(and the README) into a temporary root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile

from markdown_it import MarkdownIt
from twisted.trial.unittest import SynchronousTestCase

from llmgate import config as configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: An unprivileged user and group, in systemd's range for dynamic users.
DYNAMIC_ID = 61234


def shell_blocks(path: str) -> list[str]:
    """
    The fenced ``bash`` blocks of a markdown file, as a parser reads them.
    """
    with open(path, encoding="utf-8") as handle:
        tokens = MarkdownIt("commonmark").parse(handle.read())
    return [t.content for t in tokens if t.type == "fence" and t.info.strip() == "bash"]


def install_steps(path: str) -> list[str]:
    """
    The ``install`` lines of the systemd install block in ``path``.
    """
    for block in shell_blocks(path):
        if "etc/llmgate.service" in block:
            return [line for line in block.splitlines() if line.startswith("install ")]
    raise AssertionError(f"{path} has no systemd install block")


def run_as_dynamic_user(*argv: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=60, cwd="/",
        user=DYNAMIC_ID, group=DYNAMIC_ID, extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **environ},
    )


def validate_as_dynamic_user(config: str, **environ: str) -> subprocess.CompletedProcess[str] | None:
    """
    ``python -m llmgate --validate-config`` as the unprivileged user, as the
    unit's user would run it; None when no interpreter here is open to that
    user (this venv's may live under a private home directory).
    """
    site = sysconfig.get_paths()["purelib"]
    bootstrap = (
        f"import sys; sys.path[:0] = [{ROOT!r}, {site!r}]; "
        "from llmgate.__main__ import main; main()"
    )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for interpreter in (sys.executable, f"/usr/bin/python{version}"):
        try:
            probe = run_as_dynamic_user(interpreter, "-c", bootstrap, "--help")
        except OSError:
            continue
        if probe.returncode == 0:
            return run_as_dynamic_user(
                interpreter, "-c", bootstrap, "--validate-config", config, **environ
            )
    return None


class SystemdInstallTests(SynchronousTestCase):
    def test_readme_and_operations_give_the_same_install_steps(self) -> None:
        self.assertEqual(
            install_steps(os.path.join(ROOT, "README.md")),
            install_steps(os.path.join(ROOT, "docs", "operations.md")),
        )

    def test_the_unit_file_names_the_same_steps(self) -> None:
        with open(os.path.join(ROOT, "etc", "llmgate.service")) as handle:
            comments = [line[1:].strip() for line in handle if line.startswith("#")]
        for step in install_steps(os.path.join(ROOT, "docs", "operations.md")):
            self.assertIn(step, comments)

    def install(self) -> str:
        """
        Run the documented ``install`` lines into a temporary root, with an
        operator's strict umask, and return the root.
        """
        root = tempfile.mkdtemp(prefix="llmgate-root-")
        self.addCleanup(shutil.rmtree, root)
        os.chmod(root, 0o755)  # as / is
        os.makedirs(os.path.join(root, "etc", "systemd", "system"), mode=0o755)
        script = ["set -eu", "umask 077"]
        for step in install_steps(os.path.join(ROOT, "docs", "operations.md")):
            script.append(step.replace(" /etc/", f" {root}/etc/"))
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=ROOT, capture_output=True, text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return root

    def test_the_installed_files_are_what_the_dynamic_user_needs(self) -> None:
        root = self.install()
        config = os.path.join(root, "etc", "llmgate", "gateway.yaml")
        secrets = os.path.join(root, "etc", "llmgate", "llmgate.env")
        for directory in (os.path.dirname(config), os.path.dirname(os.path.dirname(config))):
            self.assertTrue(os.stat(directory).st_mode & stat.S_IXOTH, directory)
        self.assertTrue(os.stat(config).st_mode & stat.S_IROTH)
        self.assertEqual(stat.S_IMODE(os.stat(secrets).st_mode), 0o600)
        for unit in ("llmgate.service", "llmgate.socket"):
            path = os.path.join(root, "etc", "systemd", "system", unit)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)

    def test_an_unprivileged_user_reads_the_config_and_not_the_secrets(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("changing to another user needs root")
        root = self.install()
        config = os.path.join(root, "etc", "llmgate", "gateway.yaml")
        secrets = os.path.join(root, "etc", "llmgate", "llmgate.env")
        with open(secrets, "w") as handle:  # root writes the key, as the operator does
            handle.write("LLM_API_KEY=sk-secret-for-the-test\n")
        # What the service reads as the dynamic user: the config, whole.
        result = run_as_dynamic_user("cat", config)
        self.assertEqual(result.returncode, 0, result.stderr)
        path = os.path.join(tempfile.mkdtemp(), "read.yaml")
        self.addCleanup(shutil.rmtree, os.path.dirname(path))
        with open(path, "w") as handle:
            handle.write(result.stdout)
        loaded = configuration.load(path, {"LLM_API_KEY": "sk-secret-for-the-test"})
        self.assertEqual(loaded.llm.api_key, "sk-secret-for-the-test")
        self.assertIn("trace", [m.type for m in loaded.middlewares])
        # What systemd reads for it, as root: not the dynamic user's to read.
        result = run_as_dynamic_user("cat", secrets)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Permission denied", result.stderr)
        # The daemon's own check, as that user, with the key systemd passes.
        validated = validate_as_dynamic_user(config, LLM_API_KEY="sk-secret-for-the-test")
        if validated is None:
            self.skipTest("no Python here that the unprivileged user may run")
        self.assertEqual(validated.returncode, 0, validated.stderr)
        self.assertIn("configuration OK", validated.stdout)
        self.assertIn("key configured", validated.stdout)

    def test_the_old_steps_would_have_failed_this_test(self) -> None:
        """
        The check is not vacuous: a root-only config (the steps as they
        were, ``install -D -m 640``) is refused to the unprivileged user.
        """
        if os.geteuid() != 0:
            self.skipTest("changing to another user needs root")
        root = tempfile.mkdtemp(prefix="llmgate-root-")
        self.addCleanup(shutil.rmtree, root)
        os.chmod(root, 0o755)
        config = os.path.join(root, "etc", "llmgate", "gateway.yaml")
        subprocess.run(
            ["install", "-D", "-m", "640", os.path.join(ROOT, "etc", "gateway.yaml"), config],
            check=True,
        )
        result = run_as_dynamic_user("cat", config)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Permission denied", result.stderr)
        validated = validate_as_dynamic_user(config)
        if validated is not None:  # what the issue saw
            self.assertEqual(validated.returncode, 2)
            self.assertIn("Permission denied", validated.stderr)


class MakefileTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("make") is None:
            self.skipTest("no make")
        self.scratch = tempfile.mkdtemp(prefix="llmgate-make-")
        self.addCleanup(shutil.rmtree, self.scratch)
        self.old_python = os.path.join(self.scratch, "python3.9")
        with open(self.old_python, "w") as handle:
            handle.write('#!/bin/sh\n[ "$1" = -V ] && { echo "Python 3.9.2"; exit 0; }\nexit 1\n')
        os.chmod(self.old_python, 0o755)

    def make(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", "-C", ROOT, *argv], capture_output=True,
            text=True, timeout=120,
        )

    def test_an_old_python_is_refused_clearly_before_anything_is_made(self) -> None:
        venv = os.path.join(self.scratch, "venv")
        result = self.make(f"PYTHON={self.old_python}", f"VENV={venv}", "setup")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("needs Python 3.11 or newer", result.stderr)
        self.assertIn("Python 3.9.2", result.stderr)
        self.assertFalse(os.path.exists(venv))

    def test_a_venv_with_a_too_old_python_is_rebuilt_not_reused(self) -> None:
        venv = os.path.join(self.scratch, "venv")
        os.makedirs(os.path.join(venv, "bin"))
        shutil.copy(self.old_python, os.path.join(venv, "bin", "python"))
        for name in (".created", ".installed", ".installed-test"):
            open(os.path.join(venv, name), "w").close()
        result = self.make("-n", f"VENV={venv}", "setup")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("rebuilding it", result.stdout)
        self.assertIn(f"-m venv {venv}", result.stdout)
        self.assertFalse(os.path.exists(venv))

    def test_a_good_venv_is_kept(self) -> None:
        venv = os.path.join(self.scratch, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        result = self.make("-n", f"VENV={venv}", "setup")
        self.assertNotIn("rebuilding", result.stdout)
        self.assertTrue(os.path.exists(os.path.join(venv, "bin", "python")))

    def test_make_run_installs_the_package_without_the_test_extras(self) -> None:
        venv = os.path.join(self.scratch, "venv")
        run = self.make("-n", f"VENV={venv}", "run")
        self.assertIn("pip install --quiet -e .\n", run.stdout)
        self.assertNotIn("[test]", run.stdout)
        self.assertIn("twistd --nodaemon", run.stdout)
        test = self.make("-n", f"VENV={venv}", "test")
        self.assertIn("-e '.[test]'", test.stdout)
        self.assertNotIn("compat", run.stdout + test.stdout)


class ScratchFilesTests(SynchronousTestCase):
    def test_tests_write_outside_the_checkout(self) -> None:
        """
        pytest runs in a temporary directory (tests/conftest.py); trial in
        its own ``_trial_temp``.  Either way no test file lands among the
        sources.
        """
        from hypothesis.configuration import storage_directory

        trial_temp = os.path.join(ROOT, "_trial_temp")
        for path in (
            os.path.abspath(self.mktemp()),
            str(storage_directory("examples", intent_to_write=False).path),
        ):
            inside = path.startswith(ROOT + os.sep)
            self.assertFalse(inside and not path.startswith(trial_temp + os.sep), path)
