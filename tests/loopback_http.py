"""A loopback HTTP/1.1 server for fault tests: real sockets on 127.0.0.1, bounded in time and connections.

The server listens on ``127.0.0.1`` at a free port (port 0) and answers each connection with one
:class:`Reply` chosen by ``app(request)``; every reply closes its connection (``Connection:
close``), so a request is a connection. It stops by itself after ``lifetime_s`` seconds or
``max_connections`` connections, whichever comes first: slow replies (drip, silence) end then
too. Use it as a context manager, or call :meth:`LoopbackServer.close`; all threads are daemons.

Reply behaviours (the faults a venue can show on the wire):

* :meth:`Reply.send` -- status, headers and the whole body with its ``Content-Length``;
* :meth:`Reply.silent` -- read the request and never answer (until the client or the server goes);
* :meth:`Reply.drip` -- send the head, then the body one byte every ``interval_s``;
* :meth:`Reply.reset` -- declare the full length, send half the body, then reset the connection (RST);
* :meth:`Reply.stream` -- chunks of an iterable as they are produced, body delimited by closing the
  connection (no ``Content-Length``): an endless or huge body costs the server nothing until read.

:func:`mock_app` adapts an ``httpx.MockTransport`` handler (the fake venues of the tests), so the
same fakes answer over real sockets; :func:`gzip_zeros` streams a gzip bomb lazily.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import httpx

__all__ = ["LoopbackServer", "Reply", "Request", "mock_app", "gzip_zeros"]

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 418: "I'm a teapot",
            429: "Too Many Requests", 451: "Unavailable For Legal Reasons", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Request:
    """One request as the server read it: ``target`` is the path with its query string."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))


@dataclass
class Reply:
    """What the server does with one request; build it with the class methods."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: Iterable[bytes] | None = None
    mode: Literal["send", "silent", "drip", "reset", "stream"] = "send"
    interval_s: float = 1.0

    @classmethod
    def send(cls, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> "Reply":
        return cls(status, dict(headers or {}), body)

    @classmethod
    def json(cls, status: int, text: str, headers: dict[str, str] | None = None) -> "Reply":
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, text.encode())

    @classmethod
    def silent(cls) -> "Reply":
        return cls(mode="silent")

    @classmethod
    def drip(cls, body: bytes, interval_s: float, headers: dict[str, str] | None = None) -> "Reply":
        return cls(200, {"Content-Type": "application/json", **(headers or {})}, body, mode="drip", interval_s=interval_s)

    @classmethod
    def reset(cls, body: bytes, headers: dict[str, str] | None = None) -> "Reply":
        return cls(200, {"Content-Type": "application/json", **(headers or {})}, body, mode="reset")

    @classmethod
    def stream(cls, chunks: Iterable[bytes], headers: dict[str, str] | None = None, status: int = 200) -> "Reply":
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, chunks=chunks, mode="stream")


App = Callable[[Request], Reply]


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that stops by itself (see the module docstring)."""

    def __init__(self, app: App, *, lifetime_s: float = 20.0, max_connections: int = 200) -> None:
        self.app = app
        self.max_connections = max_connections
        self.requests: list[Request] = []
        self.connections = 0
        self._deadline = time.monotonic() + lifetime_s
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"loopback:{self.port}", daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r.path == path)

    def alive(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def close(self) -> None:
        """Stop accepting, end slow replies, and wait (briefly) for every thread."""
        self._stop.set()
        self._acceptor.join(timeout=2)
        for t in list(self._threads):
            t.join(timeout=2)

    def __enter__(self) -> "LoopbackServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        try:
            while self.alive() and self.connections < self.max_connections:
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self.connections += 1
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(t)
                t.start()
        finally:
            self._stop.set()  # past its lifetime or connection count: the server is done
            self._sock.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        try:
            req = _read_request(conn)
            if req is None:
                return
            self.requests.append(req)
            reply = self.app(req)
            self._reply(conn, reply)
        except OSError:
            pass  # the client went away (or was reset): nothing to answer
        finally:
            conn.close()

    def _wait_for_client_to_leave(self, conn: socket.socket, seconds: float) -> bool:
        """Sleep up to ``seconds`` while the server lives; True when the client closed meanwhile."""
        end = time.monotonic() + seconds
        conn.settimeout(0.05)
        while self.alive() and time.monotonic() < end:
            try:
                if conn.recv(4096) == b"":
                    return True
            except TimeoutError:
                continue
        return not self.alive()

    def _reply(self, conn: socket.socket, reply: Reply) -> None:
        if reply.mode == "silent":
            self._wait_for_client_to_leave(conn, float("inf"))
            return
        if reply.mode == "stream":
            conn.sendall(_head(reply.status, reply.headers, None))
            for chunk in reply.chunks or ():
                if not self.alive():
                    return
                conn.sendall(chunk)
            return
        head = _head(reply.status, reply.headers, len(reply.body))
        if reply.mode == "send":
            conn.sendall(head + reply.body)
        elif reply.mode == "drip":
            conn.sendall(head)
            for i in range(len(reply.body)):
                if self._wait_for_client_to_leave(conn, reply.interval_s):
                    return
                conn.sendall(reply.body[i:i + 1])
        elif reply.mode == "reset":
            conn.sendall(head + reply.body[: len(reply.body) // 2])
            time.sleep(0.05)  # let the half body reach the client before the reset
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST


def _head(status: int, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("content-length", "connection")]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_request(conn: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            return None
        if not chunk or len(data) > _MAX_HEAD:
            return None
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    first, *rest = head.split("\r\n")
    parts = first.split(" ")
    if len(parts) != 3:
        return None
    headers = {}
    for line in rest:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Request(parts[0], parts[1], headers)


def mock_app(handler: Callable[[httpx.Request], httpx.Response]) -> App:
    """An app answering like an ``httpx.MockTransport`` handler (status, headers and decoded body)."""

    def app(req: Request) -> Reply:
        resp = handler(httpx.Request(req.method, f"http://127.0.0.1{req.target}", headers=req.headers))
        skip = ("content-length", "content-encoding", "transfer-encoding", "connection")
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in skip}
        return Reply.send(resp.status_code, resp.content, headers)

    return app


def gzip_zeros(total_bytes: int, *, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A gzip stream of ``total_bytes`` zeros, compressed lazily (1 GiB of zeros is ~1 MB of gzip)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(chunk)
    sent = 0
    while sent < total_bytes:
        n = min(chunk, total_bytes - sent)
        out = comp.compress(zeros[:n])
        sent += n
        if out:
            yield out
    yield comp.flush()
