"""
The wire: bytes to requests and answers, and back.

- :mod:`llmgate.http.server`: the client side, a one-step request parser in
  front of twisted.web's channel.
- :mod:`llmgate.http.upstream`: the HTTP/1.1 client llmgate sends with:
  :mod:`llmgate.http.parser` (answers, a state machine),
  :mod:`llmgate.http.connection` (one kept connection) and
  :mod:`llmgate.http.pool` (keeping connections, when to send again).
- :mod:`llmgate.http.twisted_names`: Twisted's private names the fast paths
  use, checked once, with a fallback.
- :mod:`llmgate.http.relay`: an answer's body relayed with backpressure.
- :mod:`llmgate.http.headers`: which headers cross the gateway.
- :mod:`llmgate.http.sendnow`, :mod:`llmgate.http.deadlines`: writes sent at
  once, and many timeouts of one length on one timer.
"""
