"""Length-prefixed frames over pipe file descriptors, shared by the sandbox pool and its children."""

from __future__ import annotations

import os
import signal
import struct

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 256 * 1024 * 1024
# A new child's first frame: it has imported what it runs calls with.
READY = b"ready"
# What the pool sends a child whose call is cancelled, before it kills it: the child ends the call
# as its deadline would, its query on a remote server too (a MySQL server runs on after its
# client is gone).
CANCEL_SIGNAL = signal.SIGUSR1


def write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_frame(fd: int) -> bytes | None:
    """The next frame, or None at end of file (the other side has gone)."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ValueError("frame too large")
    return _read_exactly(fd, length) if length else b""


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = os.read(fd, size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
