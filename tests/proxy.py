"""A TCP proxy for tests: forwards to a server until paused; paused, it keeps every
connection open and forwards nothing — a network partition that drops packets, as a
half-open connection looks to both ends."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._stop = threading.Event()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str = "/0") -> str:
        return f"redis://127.0.0.1:{self.port}{path}"

    def pause(self) -> None:
        self.forwarding.clear()

    def resume(self) -> None:
        self.forwarding.set()

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [self.listener, *self._pairs]:
            sock.close()

    def _drop(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        for s in (sock, other):
            if s is not None:
                self._pairs.pop(s, None)
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(s)
                s.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    self._pairs[client] = upstream
                    self._pairs[upstream] = client
                    self._sel.register(client, selectors.EVENT_READ)
                    self._sel.register(upstream, selectors.EVENT_READ)
                    continue
                if not self.forwarding.is_set():
                    continue  # leave the bytes in the kernel's buffers: nothing goes through
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(sock)
                    continue
                try:
                    self._pairs[sock].sendall(data)
                except (OSError, KeyError):
                    self._drop(sock)
            if not self.forwarding.is_set():
                self._stop.wait(0.05)  # paused: the selector would report the same bytes again
