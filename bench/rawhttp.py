"""
A minimal blocking HTTP/1.1 client on raw sockets, for the benchmark probes.

It exists so that the probes time what the wire does, with nothing in
between: no client library buffering, no event loop.  Keep-alive, chunked
and Content-Length framing; no TLS, no redirects, no pipelining.
Standard library only.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, Optional

now_ns = time.perf_counter_ns


class ProtocolError(Exception):
    pass


class ChunkedDecoder:
    """Incremental ``Transfer-Encoding: chunked`` decoder."""

    SIZE, DATA, DATA_CRLF, TRAILER, DONE = range(5)

    def __init__(self) -> None:
        self.buf = bytearray()
        self.state = self.SIZE
        self.remaining = 0

    @property
    def done(self) -> bool:
        return self.state == self.DONE

    def feed(self, data: bytes) -> bytes:
        buf = self.buf
        buf += data
        out = []
        pos = 0
        while self.state != self.DONE:
            if self.state == self.SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                try:
                    size = int(bytes(buf[pos:end]).split(b";")[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {bytes(buf[pos:end])[:40]!r}")
                pos = end + 2
                if size == 0:
                    self.state = self.TRAILER
                else:
                    self.remaining = size
                    self.state = self.DATA
            elif self.state == self.DATA:
                take = min(self.remaining, len(buf) - pos)
                if take <= 0:
                    break
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = self.DATA_CRLF
            elif self.state == self.DATA_CRLF:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                pos += 2
                self.state = self.SIZE
            elif self.state == self.TRAILER:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                line = buf[pos:end]
                pos = end + 2
                if not line:
                    self.state = self.DONE
        del buf[:pos]
        return b"".join(out)


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.sent_ns = 0
        self.headers_ns = 0
        self.end_ns = 0
        self.body_bytes = 0
        self.complete = False  # the framing says the body ended
        self.aborted = False  # on_data asked to stop
        self.keep_alive = False


class Connection:
    """
    One persistent connection.  ``request`` reconnects when the previous
    answer closed it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 30.0,
        rcvbuf: Optional[int] = None,
        recv_size: int = 65536,
    ) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self.rcvbuf = rcvbuf
        self.recv_size = recv_size
        self.sock: Optional[socket.socket] = None
        self.connects = 0

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf:
            # Before connect(), so the advertised window stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock
        self.connects += 1

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes = b"",
        on_data: Optional[Callable[[bytes, int], bool]] = None,
    ) -> Response:
        """
        Send one request and read its whole answer.  ``on_data(chunk, t_ns)``
        gets every decoded body piece with the time its recv() returned; it
        returns False to abandon the answer (the connection is then closed).
        """
        if self.sock is None:
            self._connect()
        assert self.sock is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for name, value in headers.items():
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        wire = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

        response = Response()
        sock = self.sock
        recv = sock.recv
        size = self.recv_size
        response.sent_ns = now_ns()
        sock.sendall(wire)

        head = bytearray()
        while True:
            data = recv(size)
            if not data:
                self.close()
                raise ProtocolError("connection closed before response headers")
            head += data
            end = head.find(b"\r\n\r\n")
            if end >= 0:
                break
        t = now_ns()
        response.headers_ns = t
        rest = bytes(head[end + 4 :])
        status_line, *header_lines = bytes(head[:end]).split(b"\r\n")
        parts = status_line.split(b" ", 2)
        response.status = int(parts[1])
        for line in header_lines:
            name, _, value = line.partition(b":")
            response.headers[name.strip().lower()] = value.strip()
        connection = response.headers.get(b"connection", b"").lower()
        keep_alive = connection != b"close"

        no_body = method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        chunked = b"chunked" in response.headers.get(b"transfer-encoding", b"").lower()
        length = response.headers.get(b"content-length")
        remaining = None if (chunked or length is None) else int(length)
        decoder = ChunkedDecoder() if chunked else None

        def deliver(piece: bytes, t_ns: int) -> bool:
            if not piece:
                return True
            response.body_bytes += len(piece)
            if on_data is not None:
                return on_data(piece, t_ns) is not False
            return True

        if no_body:
            response.complete = True
        else:
            data = rest
            while True:
                if data:
                    if decoder is not None:
                        piece = decoder.feed(data)
                    elif remaining is not None:
                        piece = data[:remaining]
                        remaining -= len(piece)
                    else:
                        piece = data
                    if not deliver(piece, t):
                        response.aborted = True
                        keep_alive = False
                        break
                    if (decoder is not None and decoder.done) or remaining == 0:
                        response.complete = True
                        break
                data = recv(size)
                t = now_ns()
                if not data:
                    # Closed by the server: complete only for read-to-close bodies.
                    response.complete = decoder is None and remaining is None
                    keep_alive = False
                    break
        response.end_ns = now_ns()
        response.keep_alive = keep_alive
        if not keep_alive:
            self.close()
        return response


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]
