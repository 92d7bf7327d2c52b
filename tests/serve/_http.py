"""Raw-socket helpers for the service tests (tests/serve and tests/fuzz): the one read loop."""

from __future__ import annotations

import socket


def read_until_close(s: socket.socket, timeout: float | None = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends the read too)."""
    if timeout is not None:
        s.settimeout(timeout)
    chunks = []
    try:
        while block := s.recv(65536):
            chunks.append(block)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def raw_exchange(address: tuple[str, int], data: bytes, *, timeout: float = 10.0, half_close: bool = False) -> bytes:
    """Send raw bytes and read until the server closes the connection (for framing errors).

    ``half_close``: shut the sending side after ``data``, so the server sees the end at once and
    never waits for more (and tolerate a server that answered and closed before all was sent).
    """
    with socket.create_connection(address, timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            if not half_close:
                raise
        return read_until_close(s, None)
