"""A failover's endpoint: a local TCP port standing where a DNS name such as ElastiCache's primary
endpoint stands. A failover repoints the name; connections made before keep their server, new ones
reach the new primary. No network name can be repointed on this machine, so this port does it.
"""

from __future__ import annotations

import socket
import threading


class Endpoint:
    """Forwards each connection to the port it names at the moment the connection is made."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def repoint(self, target_port: int) -> None:
        """What the failover does to the name: only connections made from now on reach `target_port`."""
        self.target_port = target_port

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # either side closed
