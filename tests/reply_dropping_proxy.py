"""A TCP proxy on loopback that can lose replies: requests reach the server, the answers never come back.

The "Redis ran the command but the client never heard" failure (a reply lost to a network fault, a
timeout just after the server answered), made on purpose: while ``drop_replies`` is set, bytes from
the server are read and thrown away; the client's socket stays open, so it times out.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any


class ReplyDroppingProxy:
    """``127.0.0.1:<port>`` forwarding to ``upstream`` (host, port); a context manager."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.drop_replies = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, is_reply: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (is_reply and self.drop_replies):
                    target.sendall(data)
        except OSError:
            pass
        finally:  # one side closed: close the other, so neither end waits on a dead pair
            for s in (source, target):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def __enter__(self) -> ReplyDroppingProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
