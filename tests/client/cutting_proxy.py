"""A TCP proxy on 127.0.0.1 that cuts chosen connections after a number of bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class CuttingProxy:
    upstream: tuple[str, int]
    cuts: list[int | None]  # bytes after which the n-th connection is cut; None: never
    connections: int = 0
    forwarded: list[int] = field(default_factory=list)  # bytes sent back, per connection
    url: str = ""
    _listener: socket.socket = field(default_factory=socket.socket, repr=False)

    def _serve(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            cut = self.cuts[self.connections] if self.connections < len(self.cuts) else None
            self.connections += 1
            self.forwarded.append(0)
            threading.Thread(
                target=self._pipe, args=(downstream, cut, self.connections - 1), daemon=True
            ).start()

    def _pipe(self, downstream: socket.socket, cut: int | None, index: int) -> None:
        upstream = socket.create_connection(self.upstream, timeout=30)
        downstream.settimeout(30)

        def forward_requests() -> None:
            try:
                while data := downstream.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=forward_requests, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if cut is not None and sent + len(data) >= cut:
                    downstream.sendall(data[: cut - sent])
                    self.forwarded[index] = cut
                    break  # cut: close both sides mid-stream
                downstream.sendall(data)
                sent += len(data)
                self.forwarded[index] = sent
        except OSError:
            pass
        finally:
            for sock in (downstream, upstream):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@contextmanager
def cutting_proxy(upstream_url: str, cuts: list[int | None]) -> Iterator[CuttingProxy]:
    host, port = upstream_url.removeprefix("http://").split(":")
    proxy = CuttingProxy((host, int(port)), cuts)
    proxy._listener.bind(("127.0.0.1", 0))
    proxy._listener.listen()
    proxy.url = f"http://127.0.0.1:{proxy._listener.getsockname()[1]}"
    server = threading.Thread(target=proxy._serve, daemon=True)
    server.start()
    try:
        yield proxy
    finally:
        with suppress(OSError):
            proxy._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        proxy._listener.close()
        server.join(timeout=5)
