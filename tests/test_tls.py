"""
Upstream TLS, end to end: a fake upstream that speaks TLS on loopback with a
certificate from a private CA made here (``cryptography``), and gateways that
trust the system's CAs (the default), the private CA (``llm.ca_file``), or
nothing at all (``llm.tls_verify: false``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web.server import Site

from llmgate import config as configuration
from llmgate.service import GatewayService
from tests.fakeupstream import FakeUpstream

#: Twisted hands pyOpenSSL objects to pyOpenSSL, which says it would rather
#: have cryptography's; not ours to fix here.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

WAIT = 10.0
CHAT = json.dumps(
    {"model": "gpt-tls", "messages": [{"role": "user", "content": "over tls"}]}
).encode()
JSON = {"content-type": ["application/json"]}


def within(d: Deferred, seconds: float = WAIT) -> Deferred:
    return d.addTimeout(seconds, reactor)


# -- a private CA and a server certificate for 127.0.0.1 ----------------------------


@attrs.frozen
class Authority:
    ca_pem: bytes
    server_key_pem: bytes
    server_cert_pem: bytes
    other_ca_pem: bytes
    #: (key, certificate) from the same CA, naming only ``upstream.invalid``.
    misnamed: tuple[bytes, bytes]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _self_signed_ca(common: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_certificate(
    ca_key: Any, ca_cert: x509.Certificate, names: list[x509.GeneralName]
) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("llmgate test upstream"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_authority() -> Authority:
    ca_key, ca_cert = _self_signed_ca("llmgate test CA")
    _, other_ca = _self_signed_ca("some other CA")
    key, cert = _server_certificate(
        ca_key,
        ca_cert,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    bad_key, bad_cert = _server_certificate(ca_key, ca_cert, [x509.DNSName("upstream.invalid")])
    pem = serialization.Encoding.PEM
    return Authority(
        ca_pem=ca_cert.public_bytes(pem),
        server_key_pem=_pem_key(key),
        server_cert_pem=cert.public_bytes(pem),
        other_ca_pem=other_ca.public_bytes(pem),
        misnamed=(_pem_key(bad_key), bad_cert.public_bytes(pem)),
    )


@pytest.fixture(scope="module")
def authority() -> Authority:
    return make_authority()


@attrs.define
class TLSUpstream:
    url: str
    resource: FakeUpstream
    ca_file: str
    other_ca_file: str


@pytest.fixture
def tls_upstream(authority: Authority, tmp_path: Any) -> Iterator[TLSUpstream]:
    """
    The fake upstream on ``https://127.0.0.1:<port>`` with a certificate
    signed by the test CA.
    """
    resource = FakeUpstream(reactor)
    site = Site(resource)
    site.noisy = False
    options = ssl.PrivateCertificate.loadPEM(
        authority.server_key_pem + authority.server_cert_pem
    ).options()
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.ca_pem)
    other = tmp_path / "other-ca.pem"
    other.write_bytes(authority.other_ca_pem)
    yield TLSUpstream(
        url=f"https://127.0.0.1:{port.getHost().port}",
        resource=resource,
        ca_file=str(ca_file),
        other_ca_file=str(other),
    )
    pytest_twisted.blockon(port.stopListening())


def tls_gateway(make_gateway: Any, upstream: TLSUpstream, **llm: Any) -> Any:
    return make_gateway(
        document={"llm": {"base_url": upstream.url, "api_key": "sk-tls-test-key", **llm}}
    )


def chat(gateway: Any) -> Deferred:
    return within(
        treq.post(
            gateway.url + "/v1/chat/completions", data=CHAT, headers=JSON, persistent=False
        )
    )


# -- tests ----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_self_signed_upstream_is_refused_by_default_with_a_tls_error(make_gateway, tls_upstream):
    gateway = tls_gateway(make_gateway, tls_upstream)
    for _ in range(2):  # the failure leaves nothing broken behind: same answer again
        response = yield chat(gateway)
        assert response.code == 502
        document = json.loads((yield within(treq.content(response))))
        assert document["error"]["code"] == "upstream_tls", document
        assert "tls" in document["error"]["message"]
    assert tls_upstream.resource.seen == []  # no request crossed the failed handshake
    metrics = yield within(treq.get(gateway.url + "/metrics", persistent=False))
    view = json.loads((yield within(treq.content(metrics))))
    assert view["upstream_errors"] == {"upstream_tls": 2}


@pytest_twisted.inlineCallbacks
def test_after_a_refused_certificate_the_next_call_to_a_good_upstream_still_works(
    make_gateway, tls_upstream, upstream
):
    refused = tls_gateway(make_gateway, tls_upstream)
    response = yield chat(refused)
    assert response.code == 502
    yield within(treq.content(response))
    good = make_gateway(llm__api_key="sk-plain")
    response = yield chat(good)
    assert response.code == 200
    yield within(treq.content(response))
    # And the refusing gateway itself keeps serving its own endpoints.
    health = yield within(treq.get(refused.url + "/health", persistent=False))
    assert health.code == 200
    yield within(treq.content(health))


@pytest_twisted.inlineCallbacks
def test_ca_file_naming_the_private_ca_makes_the_upstream_trusted(make_gateway, tls_upstream):
    gateway = tls_gateway(make_gateway, tls_upstream, ca_file=tls_upstream.ca_file)
    response = yield chat(gateway)
    assert response.code == 200
    document = json.loads((yield within(treq.content(response))))
    assert document["choices"][0]["message"]["content"] == "Hello from the fake upstream"
    seen = tls_upstream.resource.seen[-1]
    assert seen.header(b"authorization") == b"Bearer sk-tls-test-key"


@pytest_twisted.inlineCallbacks
def test_ca_file_naming_another_ca_still_refuses(make_gateway, tls_upstream):
    gateway = tls_gateway(make_gateway, tls_upstream, ca_file=tls_upstream.other_ca_file)
    response = yield chat(gateway)
    assert response.code == 502
    document = json.loads((yield within(treq.content(response))))
    assert document["error"]["code"] == "upstream_tls"
    assert tls_upstream.resource.seen == []


@pytest.fixture
def misnamed_upstream(authority: Authority, tls_upstream: TLSUpstream) -> Iterator[TLSUpstream]:
    """
    An upstream on 127.0.0.1 whose certificate, from the trusted test CA,
    names only ``upstream.invalid``: trusted issuer, wrong name.
    """
    resource = FakeUpstream(reactor)
    site = Site(resource)
    site.noisy = False
    key_pem, cert_pem = authority.misnamed
    options = ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options()
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    yield TLSUpstream(
        url=f"https://127.0.0.1:{port.getHost().port}",
        resource=resource,
        ca_file=tls_upstream.ca_file,
        other_ca_file=tls_upstream.other_ca_file,
    )
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.inlineCallbacks
def test_ca_file_does_not_excuse_a_name_mismatch(make_gateway, misnamed_upstream):
    """
    The CA is trusted but the certificate does not name the address the
    gateway dials: refused (service_identity checks names), nothing sent.
    """
    gateway = tls_gateway(make_gateway, misnamed_upstream, ca_file=misnamed_upstream.ca_file)
    response = yield chat(gateway)
    assert response.code == 502
    document = json.loads((yield within(treq.content(response))))
    assert document["error"]["code"].startswith("upstream_")
    assert misnamed_upstream.resource.seen == []


@pytest_twisted.inlineCallbacks
def test_a_name_mismatch_is_reported_as_a_tls_error(make_gateway, misnamed_upstream):
    gateway = tls_gateway(make_gateway, misnamed_upstream, ca_file=misnamed_upstream.ca_file)
    response = yield chat(gateway)
    document = json.loads((yield within(treq.content(response))))
    assert document["error"]["code"] == "upstream_tls", document


@pytest_twisted.inlineCallbacks
def test_tls_verify_false_accepts_the_upstream(make_gateway, tls_upstream):
    gateway = tls_gateway(make_gateway, tls_upstream, tls_verify=False)
    response = yield chat(gateway)
    assert response.code == 200
    yield within(treq.content(response))
    assert len(tls_upstream.resource.seen) == 1


def test_a_ca_file_that_does_not_exist_is_a_config_error(tmp_path):
    with pytest.raises(configuration.ConfigError, match=r"^llm\.ca_file: "):
        configuration.parse(
            {"llm": {"base_url": "https://127.0.0.1:1", "ca_file": str(tmp_path / "missing.pem")}}
        )


@pytest_twisted.inlineCallbacks
def test_tls_verify_false_logs_a_warning_at_start(tls_upstream):
    """
    The real service, started and stopped in this process: a warning that
    the upstream's certificate is not checked, and none when it is.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        for verify in (False, True):
            config = configuration.parse(
                {
                    "server": {"host": "127.0.0.1", "port": 0},
                    "llm": {"base_url": tls_upstream.url, "tls_verify": verify},
                    "session": {"enabled": False},
                }
            )
            service = GatewayService(config, reactor)
            del events[:]
            service.startService()
            try:
                warnings = [
                    formatEvent(e)
                    for e in events
                    if e.get("log_level") == LogLevel.warn and "tls_verify" in formatEvent(e)
                ]
                if verify:
                    assert warnings == []
                else:
                    assert len(warnings) == 1
                    assert "not checked" in warnings[0]
            finally:
                yield within(service.stopService())
    finally:
        globalLogPublisher.removeObserver(events.append)
        signal.signal(signal.SIGTERM, previous)
