"""
The manhole: an SSH console (twisted.conch) into the running gateway, for
live inspection.  Public-key authentication only, listening on a UNIX
socket of mode 600 or on a loopback address, with a fresh Python namespace
per login.  Never the stock ``twistd manhole`` (passwords, telnet).
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Callable, Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import strports
from twisted.application.service import IService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import portal
from twisted.internet.endpoints import _parseServer
from zope.interface import implementer

from llmgate.config import ConfigError


@implementer(IAuthorizedKeysDB)
class AuthorizedKeys:
    """
    The keys of one ``authorized_keys`` file, for any user name: the
    console has one kind of user, the operator.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys = load_authorized_keys(path)

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        return self.keys


class _Session(manhole_ssh.TerminalSession):
    """
    A console session that survives the client closing its input (``ssh``
    with a script piped in): the script's own Ctrl-D ends the session.
    """

    def eofReceived(self) -> None:
        pass


def load_authorized_keys(path: str) -> list[keys.Key]:
    """
    :raises ConfigError: naming the file when it cannot be read or holds no key.
    """
    try:
        with open(path, "rb") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise ConfigError(
            f"manhole.authorized_keys: cannot read {path}: {error.strerror}"
        ) from None
    found = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            found.append(keys.Key.fromString(line))
        except (keys.BadKeyError, ValueError, IndexError):
            continue
    if not found:
        raise ConfigError(f"manhole.authorized_keys: {path} holds no usable public key")
    return found


def check_listen(description: str) -> str:
    """
    Accept only a UNIX socket (made mode 600) or a loopback TCP address.

    :raises ConfigError: for anything reachable from another machine.
    """
    try:
        kind, args, kwargs = _parseServer(description, None)
    except Exception as error:
        raise ConfigError(f"manhole.listen: {description!r} is not an endpoint ({error})") from None
    kind = kind.lower()
    if kind == "unix":
        if "mode" not in kwargs:
            description += ":mode=600"
        elif int(str(kwargs["mode"]), 8) & 0o077:
            raise ConfigError(f"manhole.listen: {description!r} must have mode=600")
        return description
    if kind in ("tcp", "tcp6"):
        interface = kwargs.get("interface", "")
        try:
            loopback = ipaddress.ip_address(interface).is_loopback
        except ValueError:
            loopback = interface == "localhost"
        if not loopback:
            raise ConfigError(
                f"manhole.listen: {description!r} must be a UNIX socket or listen on a "
                "loopback interface (interface=127.0.0.1)"
            )
        return description
    raise ConfigError(f"manhole.listen: {description!r}: only unix: and tcp: on loopback")


def host_key(path: str | None) -> keys.Key:
    """
    The console's SSH host key: read from ``path``, created there (mode 600)
    when missing, or made afresh for this run when no path is configured.
    """
    if path and os.path.exists(path):
        return keys.Key.fromFile(path)
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    if path:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key.toString("OPENSSH"))
    return key


def make_console(
    listen: str,
    authorized_keys: str,
    host_key_path: str | None,
    namespace: Callable[[], Mapping[str, Any]],
    reactor: Any,
) -> IService:
    """
    The console's listening service.

    :param namespace: called at each login for that login's own namespace.
    """
    listen = check_listen(listen)
    checker = SSHPublicKeyChecker(AuthorizedKeys(authorized_keys))
    realm = manhole_ssh.TerminalRealm()
    realm.sessionFactory = _Session
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(
        manhole.ColoredManhole, dict(namespace())
    )
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, [checker]))
    key = host_key(host_key_path)
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}
    factory.noisy = False
    return strports.service(listen, factory, reactor=reactor)
