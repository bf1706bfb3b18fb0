"""A file written by one thread and read while it grows (data_server/growing_files.py)."""

from __future__ import annotations

import asyncio
import os
import random
import threading

import pytest

from data_server.growing_files import EncodingFailed, GrowingFile


async def _read_all(reader) -> bytes:
    return b"".join([chunk async for chunk in reader.chunks()])


def _write_slowly(growing: GrowingFile, parts: list[bytes], started: threading.Event) -> None:
    started.wait(5)
    for part in parts:
        growing.write(part)
        growing.begin()
    growing.finish()


def test_readers_that_join_early_and_late_read_every_byte_while_the_file_moves(tmp_path):
    parts = [bytes([n]) * 300_000 for n in range(5)]  # past the wake-up threshold each time
    growing = GrowingFile(tmp_path / "scratch")
    early = growing.join()
    growing.write(parts[0])
    late = growing.join()
    started = threading.Event()
    writer = threading.Thread(target=_write_slowly, args=(growing, parts[1:], started))
    writer.start()

    async def both() -> list[bytes]:
        started.set()
        return await asyncio.gather(_read_all(early), _read_all(late))

    bodies = asyncio.run(both())
    writer.join(5)
    (tmp_path / "scratch").rename(tmp_path / "stored")  # as publishing does; readers hold fds
    assert bodies == [b"".join(parts)] * 2
    growing.close()


def test_a_reader_whose_loop_has_closed_does_not_break_the_writer(tmp_path):
    growing = GrowingFile(tmp_path / "scratch")
    reader = growing.join()

    async def wait_then_leave() -> None:
        waiting = asyncio.ensure_future(reader.started())
        await asyncio.sleep(0.01)  # registered as a waiter, then its loop goes away
        waiting.cancel()

    asyncio.run(wait_then_leave())
    assert growing.write(b"x" * 300_000) == 300_000
    growing.finish()
    growing.close()
    reader.close()


def test_a_failure_before_any_byte_is_raised_by_started_and_after_by_chunks(tmp_path):
    # Nothing written; then only a compressor's header, before any byte of the encoder's.
    for name, written in (("nothing", b""), ("header", b"\x1f\x8b")):
        growing = GrowingFile(tmp_path / name)
        before = growing.join()
        growing.write(written)
        growing.fail(OSError("disk on fire"))
        with pytest.raises(OSError, match="disk on fire"):
            asyncio.run(before.started())
        growing.close()

    growing = GrowingFile(tmp_path / "other")
    after = growing.join()
    growing.write(b"partial")
    growing.begin()
    growing.fail(OSError("disk on fire"))
    asyncio.run(after.started())  # the encoder had begun: the response may start

    async def read() -> list[bytes]:
        return [chunk async for chunk in after.chunks()]

    with pytest.raises(EncodingFailed):
        asyncio.run(read())
    growing.close()


def test_a_failure_after_the_finish_cuts_no_reader_short(tmp_path):
    """A data server stopping fails every encoding still registered, the finished ones being
    stored too: their readers, slow or joining late, still read every byte to a proper end."""
    growing = GrowingFile(tmp_path / "scratch")
    slow = growing.join()
    growing.write(b"x" * 300_000)
    growing.begin()
    growing.end_here()
    growing.finish()
    late = growing.join()
    growing.fail(RuntimeError("shutting down"))
    assert late.whole
    assert asyncio.run(_read_all(slow)) == b"x" * 300_000
    source = asyncio.run(late.complete())
    assert source.read_at(source.size(), 0) == b"x" * 300_000
    source.close()
    growing.close()


def test_complete_waits_for_the_end_and_gives_the_whole_file(tmp_path):
    growing = GrowingFile(tmp_path / "scratch")
    reader = growing.join()
    started = threading.Event()
    writer = threading.Thread(target=_write_slowly, args=(growing, [b"a" * 10, b"b" * 5], started))
    writer.start()

    async def whole() -> bytes:
        started.set()
        source = await reader.complete()
        try:
            return source.read_at(source.size(), 0)
        finally:
            source.close()

    assert asyncio.run(whole()) == b"a" * 10 + b"b" * 5
    writer.join(5)
    growing.close()


def test_whole_files_of_two_readers_read_at_their_own_offsets(tmp_path):
    """Readers' descriptors are duplicates sharing one offset: reads from several threads, over
    two readers, must each get the bytes they asked for."""
    data = os.urandom(4 << 20)
    growing = GrowingFile(tmp_path / "scratch")
    readers = [growing.join(), growing.join()]
    growing.write(data)
    growing.begin()
    growing.finish()

    async def whole() -> list:
        return [await reader.complete() for reader in readers]

    sources = asyncio.run(whole())
    wrong: list[int] = []

    def read(source, seed: int) -> None:
        positions = random.Random(seed)
        for _ in range(200):
            start = positions.randrange(0, len(data) - 65536)
            if source.read_at(65536, start) != data[start : start + 65536]:
                wrong.append(start)

    threads = [threading.Thread(target=read, args=(sources[n % 2], n)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == [] and [source.size() for source in sources] == [len(data)] * 2
    for source in sources:
        source.close()
    growing.close()
