"""
Keeping secrets out of everything the gateway writes: traces, logs, errors.
"""

from __future__ import annotations

from typing import Iterable, Sequence

#: Header names whose values are credentials, in either direction.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
    }
)

REDACTED = "[redacted]"
_REDACTED_BYTES = REDACTED.encode("ascii")


class Scrubber:
    """
    Replace known secret strings (the configured API key, client tokens)
    wherever they appear in text.

    :param secrets: the strings to hide; empty and very short ones are
        ignored, since hiding them would mangle ordinary text.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = tuple(
            sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)
        )
        self._encoded_for: tuple[str, ...] | None = None
        self._encoded_cache: tuple[bytes, ...] = ()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 6 and secret not in self._secrets:
            self._secrets = tuple(sorted((*self._secrets, secret), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def bytes(self, data: bytes) -> bytes:
        """
        :meth:`__call__` for UTF-8 bytes, such as a serialised document.
        """
        for secret in self._encoded:
            if secret in data:
                data = data.replace(secret, _REDACTED_BYTES)
        return data

    @property
    def _encoded(self) -> tuple[bytes, ...]:
        if self._encoded_for is not self._secrets:
            self._encoded_cache = tuple(s.encode("utf-8", "surrogatepass") for s in self._secrets)
            self._encoded_for = self._secrets
        return self._encoded_cache

    def __bool__(self) -> bool:
        return bool(self._secrets)

    @property
    def longest(self) -> int:
        """
        The length of the longest secret: how far past a cut a secret that
        straddles it can reach.
        """
        return len(self._secrets[0]) if self._secrets else 0

    def cut(self, text: str, limit: int) -> str:
        """
        ``text`` scrubbed, then cut to ``limit`` characters, never the other
        way round: a secret straddling the cut would keep its prefix.  A cut
        that leaves the start of a secret at the end (the rest was cut off
        before the text reached here) loses that start too.
        """
        text = self(text)
        if len(text) > limit:
            text = text[:limit]
        return self._without_partial(text)

    def _without_partial(self, text: str) -> str:
        for secret in self._secrets:
            # Three characters ("sk-") say nothing; four or more are cut.
            for size in range(min(len(secret) - 1, len(text)), 3, -1):
                if text.endswith(secret[:size]):
                    return text[:-size] + REDACTED
        return text


def redact_headers(
    headers: Iterable[tuple[bytes, Sequence[bytes]]], extra: frozenset[str] = frozenset()
) -> dict[str, list[str]]:
    """
    Headers as a JSON-able mapping, credential values replaced.

    :param extra: more lower-case names to redact (``llm.auth_header``).
    """
    result: dict[str, list[str]] = {}
    names = _HEADER_KEYS
    for name, values in headers:
        key = names.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(names) < _MAX_HEADER_KEYS:
                names[name] = key
        if key in SECRET_HEADERS or key in extra:
            result[key] = [REDACTED for _ in values]
        else:
            decoded = [value.decode("latin-1") for value in values]
            if key in result:
                result[key].extend(decoded)
            else:
                result[key] = decoded
    return result


#: Header names as trace keys, decoded and lower-cased once per process: a
#: gateway meets the same few dozen names on every call.
_HEADER_KEYS: dict[bytes, str] = {}
_MAX_HEADER_KEYS = 1024
