"""A file written by one thread and read while it grows: the first fetch of a representation.

The encoder writes at its own speed; each reader follows the bytes written so far from its own
descriptor of the file, waiting asynchronously (no thread held) for more, so a slow reader never
slows the encoder or the other readers, and a reader that leaves stops nothing. Readers get a
duplicate of the writer's descriptor, so renaming the file into the store, or unlinking it, does
not affect them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from starlette.concurrency import run_in_threadpool

from data_server.ranges import READ_CHUNK_BYTES
from data_server.write_behind import WriteBehind

# Readers are woken after at least this many new bytes (or the end): one wake-up per slice of a
# few hundred kilobytes, not one per compressor write.
_WAKE_BYTES = 256 * 1024


class EncodingFailed(Exception):
    """The writer stopped before the end; a reader's body is cut short."""


class GrowingFile:
    """The writer's side: ``write``, then ``finish`` (or ``fail``), then ``close``."""

    def __init__(self, path: Path, *, prepared: bool = False) -> None:
        """``prepared``: ``path`` exists (a warm file, data_server/warm_files.py) and is
        overwritten from its start; ``end_here`` cuts it to what was written."""
        self.path = path
        flags = os.O_RDWR if prepared else os.O_RDWR | os.O_CREAT | os.O_EXCL
        self._fd: int | None = os.open(path, flags, 0o600)
        self._lock = threading.Lock()
        self._written = 0
        self._announced = 0
        self._begun = False
        self._finished = False
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._write_behind = WriteBehind(self._fd)

    # ------------------------------------------------------------------------ writer

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        assert self._fd is not None
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        with self._lock:
            self._written += done
            size = self._written
            wake = self._written - self._announced >= _WAKE_BYTES
            if wake:
                self._announced = self._written
        self._write_behind.after_write(size)
        if wake:
            self._wake()
        return done

    def flush(self) -> None:
        """Written bytes are in the file already (compressors call this)."""

    def begin(self) -> None:
        """The encoder produced its first bytes: from now on a failure can only cut a body
        short. (A compressor's header, written before, proves nothing.)"""
        with self._lock:
            self._begun = True
        self._wake()

    def end_here(self) -> None:
        """Cuts the file to what was written: a prepared file's length was its own."""
        assert self._fd is not None
        os.ftruncate(self._fd, self._written)

    @property
    def finished(self) -> bool:
        """Every byte is written (``finish``), or the writer failed."""
        with self._lock:
            return self._finished

    def finish(self) -> None:
        """Every byte is written: readers may read to the end (again: nothing changes)."""
        with self._lock:
            self._finished = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        """The writer stopped short; after ``finish`` (a server stopping while a finished
        file is stored) nothing: its readers have every byte to read."""
        with self._lock:
            if self._finished:
                return
            self._finished, self._error = True, error
        self._wake()

    def close(self) -> None:
        """No new reader may join (those that have keep their descriptors)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, future)

    # ------------------------------------------------------------------------ readers

    def join(self) -> GrowingReader:
        """A reader of the file; the writer must not be closed yet (the caller ensures it)."""
        with self._lock:
            assert self._fd is not None, "joined a closed growing file"
            return GrowingReader(self, os.dup(self._fd))

    def _progress(self) -> tuple[int, bool, BaseException | None]:
        with self._lock:
            return self._written, self._finished, self._error

    def _failed_before_beginning(self) -> BaseException | None:
        with self._lock:
            return None if self._begun else self._error

    async def _changed(self, seen: int, *, until_begun: bool = False) -> None:
        """Returns once more than ``seen`` bytes are written (``until_begun``: once the encoder
        has begun), or the writer is done."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            progressed = self._begun if until_begun else self._written > seen
            if progressed or self._finished:
                return
            self._waiters.append((loop, future))
        await future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class GrowingReader:
    """One request's view of a growing file, through its own descriptor."""

    def __init__(self, growing: GrowingFile, fd: int) -> None:
        self._growing = growing
        self._file = os.fdopen(fd, "rb", buffering=0)  # closed by close() or the collector

    async def started(self) -> None:
        """Waits for the encoder's first bytes, or the end; raises if the writer failed before
        them, so that the error is answered before a status line is sent."""
        await self._growing._changed(0, until_begun=True)
        error = self._growing._failed_before_beginning()
        if error is not None:
            self.close()
            raise error

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole file as it grows; raises ``EncodingFailed`` if the writer failed."""
        position = 0
        try:
            while True:
                written, finished, error = self._growing._progress()
                if position < written:
                    size = min(READ_CHUNK_BYTES, written - position)
                    chunk = await run_in_threadpool(os.pread, self._file.fileno(), size, position)
                    position += len(chunk)
                    yield chunk
                elif error is not None:
                    raise EncodingFailed("the representation could not be encoded") from error
                elif finished:
                    return
                else:
                    await self._growing._changed(position)
        finally:
            self.close()

    @property
    def whole(self) -> bool:
        """Every byte is written and readable: ``complete`` returns at once."""
        _, finished, error = self._growing._progress()
        return finished and error is None

    async def complete(self) -> pa.NativeFile:
        """The whole file, once written (for a length, ranges or HEAD); raises what the writer
        failed with."""
        while True:
            written, finished, error = self._growing._progress()
            if error is not None:
                self.close()
                raise error
            if finished:
                return pa.PythonFile(_PositionalReader(self._file), mode="r")
            await self._growing._changed(written)

    def close(self) -> None:
        self._file.close()


class _PositionalReader(io.RawIOBase):
    """A file read at its own position with ``pread``: readers of one growing file share one
    open file description (their descriptors are duplicates), hence one offset, which ``seek``
    and ``read`` from two threads would move under each other."""

    def __init__(self, file: io.FileIO) -> None:
        self._file = file
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            offset += os.fstat(self._file.fileno()).st_size
        elif whence == io.SEEK_CUR:
            offset += self._position
        self._position = offset
        return offset

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self._file.fileno(), len(buffer), self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()
