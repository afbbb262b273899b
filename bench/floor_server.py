#!/usr/bin/env python3
"""
The floor: a bare twisted.web Resource answering the same fixed chat
completion JSON, no Klein, no upstream, no access log.  Run on the gateway's
CPU under the same load, it shows what this machine's CPython + Twisted can
do at best, so a throughput figure can be told apart from a slow machine.

    floor_server.py PORT [--no-form-parsing]

--no-form-parsing builds the Site with parsePOSTFormSubmission=False
(twisted.web otherwise parses every POST's Content-Type with the email
package to look for form submissions).
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.web import resource, server

BODY = (
    b'{"id":"chatcmpl-floor","object":"chat.completion","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello!"},"finish_reason":"stop"}]}'
)


class Answer(resource.Resource):
    isLeaf = True

    def render(self, request):  # type: ignore[no-untyped-def]
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return BODY


def main() -> None:
    port = int(sys.argv[1])
    kwargs = {"parsePOSTFormSubmission": False} if "--no-form-parsing" in sys.argv else {}
    site = server.Site(Answer(), **kwargs)
    site.log = lambda request: None  # type: ignore[method-assign]
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
