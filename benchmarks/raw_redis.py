"""A minimal Redis client over a socket and hiredis's reply parser: no per-command Python objects.

The floor path reads through it (the issue's "raw hiredis connection"), and the
workload fills Redis through it, because redis-py's own pipeline costs more in
Python than Redis does to answer.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import hiredis


def command(*args: bytes) -> bytes:
    """One command in RESP, the arguments already bytes."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RawRedis:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        db = (parts.path or "/0").lstrip("/") or "0"
        if parts.password:
            self.call(b"AUTH", parts.password.encode())
        if db != "0":
            self.call(b"SELECT", db.encode())

    def call(self, *args: bytes):
        return self.pipeline([command(*args)])[0]

    def pipeline(self, commands: Sequence[bytes]) -> list:
        """Send encoded commands in one write, then read one reply per command (errors are returned)."""
        if not commands:
            return []
        self.sock.sendall(b"".join(commands))
        replies, want, gets = [], len(commands), self.reader.gets
        while True:
            reply = gets()
            while reply is not False:
                replies.append(reply)
                if len(replies) == want:
                    return replies
                reply = gets()
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()
