"""
Fixtures for end-to-end tests: a fake upstream and gateways on real loopback
sockets (port 0), run on the reactor that pytest-twisted drives.

Unit tests do not use these: they are trial ``SynchronousTestCase``s on
``MemoryReactorClock`` and ``StringTransport``, which ``trial tests`` runs too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import attrs
import pytest
import pytest_twisted

from llmgate import config as configuration
from llmgate.service import GatewayParts
from tests.fakeupstream import FakeUpstream


def pytest_configure(config: Any) -> None:
    """
    Run the session in a temporary directory, as trial runs in
    ``_trial_temp``: ``mktemp()`` paths, relative trace directories and
    hypothesis' files (which it writes from collection on) land there, not
    in the checkout; the directory is removed at the end.
    """
    from hypothesis import configuration as hypothesis_configuration

    directory = tempfile.mkdtemp(prefix="llmgate-tests-")
    hypothesis_configuration.set_hypothesis_home_dir(os.path.join(directory, ".hypothesis"))
    previous = os.getcwd()
    os.chdir(directory)

    def restore() -> None:
        os.chdir(previous)
        shutil.rmtree(directory, ignore_errors=True)

    config.add_cleanup(restore)


@attrs.define
class Running:
    url: str
    port: Any
    resource: Any = None
    parts: GatewayParts | None = None


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _listen(site: Any) -> Any:
    return _reactor().listenTCP(0, site, interface="127.0.0.1")


@pytest.fixture
def upstream() -> Iterator[Running]:
    from twisted.web.server import Site

    resource = FakeUpstream(_reactor())
    site = Site(resource)
    site.noisy = False
    port = _listen(site)
    yield Running(url=f"http://127.0.0.1:{port.getHost().port}", port=port, resource=resource)
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def make_gateway(upstream: Running) -> Iterator[Callable[..., Running]]:
    """
    Build and start gateways in front of the fake upstream; every keyword is
    a dotted config field (``llm__api_key="k"`` for ``llm.api_key``), or
    ``document=`` for a whole config document.
    """
    started: list[Running] = []

    def start(document: dict[str, Any] | None = None, **fields: Any) -> Running:
        document = document or {}
        if "upstreams" not in document:
            document.setdefault("llm", {}).setdefault("base_url", upstream.url)
        for name, value in fields.items():
            section, key = name.split("__")
            document.setdefault(section, {})[key] = value
        config = configuration.parse(document)
        parts = GatewayParts(config, _reactor())
        port = _listen(parts.site)
        running = Running(
            url=f"http://127.0.0.1:{port.getHost().port}", port=port, parts=parts
        )
        started.append(running)
        return running

    yield start
    for running in started:
        pytest_twisted.blockon(running.port.stopListening())
        assert running.parts is not None
        pytest_twisted.blockon(running.parts.pipeline.close())
        pytest_twisted.blockon(running.parts.close_pools())
