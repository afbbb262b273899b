"""
The live view in a real browser: headless Chromium driven by Selenium
(Debian's ``chromium`` and ``chromium-driver``, which ``.ci/run`` installs).

Selenium blocks, so every browser step runs in a thread while the reactor
serves the gateways; waits are ``WebDriverWait`` conditions on the page.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.server import Site

from tests.fakeupstream import AgentUpstream
from tests.sessionsim import Simulation, replay
from tests.test_ui_e2e import ADMIN, indexed, trace_config

selenium = pytest.importorskip("selenium", reason="selenium is a test extra")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None, reason="needs chromium and chromium-driver (apt-get install chromium chromium-driver)"
)

WAIT = 30.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def agent_upstream() -> Iterator[Any]:
    resource = AgentUpstream(reactor)
    site = Site(resource)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}"
    yield resource
    pytest_twisted.blockon(port.stopListening())


def wait_for(driver: Any, condition: Any) -> Any:
    return deferToThread(WebDriverWait(driver, WAIT, poll_frequency=0.05).until, condition)


def texts(driver: Any, selector: str) -> list[str]:
    """
    The text of every node matching ``selector``, read in one go (the page
    re-renders as events arrive; element handles would go stale).
    """
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), n => n.textContent)", selector
    )


def open_page(driver: Any, url: str) -> Any:
    def go() -> None:
        driver.get("about:blank")
        driver.execute_script("sessionStorage.clear()") if driver.current_url.startswith("http") else None
        driver.get(url)
        driver.execute_script("window.__loadedOnce = true;")

    return deferToThread(go)


def post(url: str, body: dict[str, Any], session: str) -> Any:
    headers = {"content-type": ["application/json"], "x-llmgate-session-id": [session]}
    return treq.post(url + "/v1/chat/completions", json.dumps(body).encode(), headers=headers).addCallback(treq.content)


@pytest_twisted.inlineCallbacks
def test_the_sessions_page_lists_every_conversation_as_traffic_flows(
    browser, make_gateway, agent_upstream, tmp_path
):
    directory = str(tmp_path)
    gateways = {
        kind: make_gateway(document={**trace_config(directory), "llm": {"type": kind, "base_url": agent_upstream.url}})
        for kind in ("openai", "anthropic")
    }
    yield indexed(gateways["openai"], 0)
    yield open_page(browser, gateways["openai"].url + "/ui/")
    yield wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "live")
    sim = Simulation(seed=5, conversations=8, concurrency=3)
    agent_upstream.reply = sim.model
    outcomes = yield replay(sim, {kind: g.url for kind, g in gateways.items()})
    sessions = {o.session_id for o in outcomes if o.session_id}
    assert len(sessions) >= 8
    yield wait_for(browser, lambda d: sessions <= set(texts(d, "a.sid")))
    # listed live: the page was never reloaded
    assert browser.execute_script("return window.__loadedOnce === true")
    # the charts follow: bars of calls and tokens, this minute
    yield wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart-calls svg rect")) >= 1)


@pytest_twisted.inlineCallbacks
def test_a_sessions_page_shows_its_user_messages_in_order_and_script_as_text(
    browser, make_gateway, tmp_path
):
    gateway = make_gateway(document=trace_config(str(tmp_path)))
    conversation: list[dict[str, Any]] = []
    said = ["What is a gateway?", "<script>window.__ran = true</script><b>bold?</b>", "Thanks, that helps."]
    for text in said:
        conversation.append({"role": "user", "content": text})
        yield post(gateway.url, {"model": "gpt-test", "messages": conversation}, "browser-order")
        conversation.append({"role": "assistant", "content": "Hello from the fake upstream"})
    yield indexed(gateway, 3)
    yield open_page(browser, gateway.url + "/ui/sessions/browser-order")
    yield wait_for(browser, lambda d: len(texts(d, ".role-user .text")) == 3)
    assert texts(browser, ".role-user .text") == said
    assert browser.find_elements(By.CSS_SELECTOR, ".messages b") == []
    assert browser.execute_script("return window.__ran === undefined")
    assert texts(browser, ".b-decision") == ["header"] * 3


@pytest_twisted.inlineCallbacks
def test_a_streams_text_grows_on_screen_before_the_stream_ends(browser, make_gateway, upstream, tmp_path):
    gateway = make_gateway(document=trace_config(str(tmp_path)))
    yield post(gateway.url, {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}, "browser-stream")
    yield indexed(gateway, 1)
    yield open_page(browser, gateway.url + "/ui/sessions/browser-stream")
    yield wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "live")
    words = [f"word{n}" for n in range(40)]
    upstream.resource.reply = lambda body: " ".join(words)
    upstream.resource.gap = 0.05  # two seconds of stream
    body = {
        "model": "gpt-test",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "now stream"}],
    }
    streaming = post(gateway.url, body, "browser-stream")
    ended: list[bool] = []

    def end(result: Any) -> Any:
        ended.append(True)
        return result

    streaming.addBoth(end)

    def early(driver: Any) -> str | None:
        shown = texts(driver, ".call.in-progress .stream")
        return shown[0] if shown and shown[0].strip() else None

    first = yield wait_for(browser, early)
    assert not ended, "the stream had already ended"
    yield wait_for(browser, lambda d: (early(d) or "") != first and len(early(d) or "") > len(first))
    assert not ended
    yield streaming
    yield wait_for(browser, lambda d: any(t.endswith("word39") for t in texts(d, ".role-assistant .text")))


@pytest_twisted.inlineCallbacks
def test_with_admin_tokens_nothing_shows_until_the_token_is_given(browser, make_gateway, tmp_path):
    document = trace_config(str(tmp_path))
    document["auth"] = {"admin_tokens": [ADMIN]}
    gateway = make_gateway(document=document)
    yield post(gateway.url, {"model": "gpt-test", "messages": [{"role": "user", "content": "secret plans"}]}, "hidden-session")
    yield indexed(gateway, 1)
    yield open_page(browser, gateway.url + "/ui/")
    yield wait_for(browser, lambda d: d.find_element(By.ID, "login").is_displayed())
    assert not browser.find_element(By.ID, "content").is_displayed()
    assert "hidden-session" not in browser.page_source
    assert "secret plans" not in browser.page_source

    def give(token: str) -> None:
        field = browser.find_element(By.ID, "token")
        field.send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()

    yield deferToThread(give, "not-the-admin-token-at-all")
    yield wait_for(browser, lambda d: d.find_element(By.ID, "login-error").text == "That token was refused.")
    assert "hidden-session" not in browser.page_source
    yield deferToThread(give, ADMIN)
    yield wait_for(browser, lambda d: "hidden-session" in texts(d, "a.sid"))
    yield wait_for(browser, lambda d: d.find_element(By.ID, "status").text == "live")  # the feed too
    # asked once: a session page in the same tab needs no token again
    yield deferToThread(browser.get, gateway.url + "/ui/sessions/hidden-session")
    yield wait_for(browser, lambda d: texts(d, ".role-user .text") == ["secret plans"])
