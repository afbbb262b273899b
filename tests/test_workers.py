"""
Several worker processes on one port, supervised, as an operator runs them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from llmgate.config import ConfigError, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_of(port: int) -> str:
    # A new connection each time, so the kernel may pick either worker.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return json.load(answer)["worker"]


def test_workers_with_the_in_memory_session_store_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"server": {"workers": 2}})
    assert "server.workers" in str(caught.value)
    assert "redis" in str(caught.value)
    parse({"server": {"workers": 2}, "session": {"enabled": False}})


def test_workers_share_the_port_are_restarted_and_stop_together(tmp_path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({
        "server": {"port": port, "workers": 2},
        "session": {"enabled": False},
        "llm": {"base_url": "http://127.0.0.1:9"},
    }))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    process = subprocess.Popen(
        [TWISTD, "--nodaemon", "--pidfile=", "llmgate", "--config", str(config)],
        cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "2 workers listening" in line:
                break
        seen = {worker_of(port) for _ in range(40)}
        assert seen == {"0", "1"}
        children = subprocess.run(
            ["pgrep", "-f", "-P", str(process.pid), "llmgate"], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2
        os.kill(int(children[0]), signal.SIGKILL)
        for line in process.stdout:
            if "restarting" in line:
                break
        for line in process.stdout:
            if "worker" in line and "listening on" in line:
                break
        assert {worker_of(port) for _ in range(40)} == {"0", "1"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        leftovers = subprocess.run(
            ["pgrep", "-f", f"--config {config}"], capture_output=True, text=True
        ).stdout.split()
        assert leftovers == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
