"""Stable bytes per representation: a result encoded once per (format, options, content coding),
stored beside its Arrow file, then served with a length, an ETag and ranges.

A representation is materialised lazily, on its first request: encoded into the store's scratch
space, compressed if a content coding was negotiated, and published like a result (rename after
fsync, or a complete S3 upload), so a reader of the store sees it whole or not at all. Meanwhile
the requests for it in this process follow the scratch file as it grows
(data_server/growing_files.py), and they end with its last byte: the publication comes after.
The encoders and compressors are deterministic (no timestamps in gzip headers, fixed levels,
single-threaded compression), so two servers that race on a first request publish the same
bytes and the race is benign. The ETag is derived from the data key, the variant name and the
encoders' revision (``ENCODING_REVISION``), so it is the same across grants, servers and
re-materialisations. A small representation (``SMALL_REPRESENTATION_BYTES``) is not stored at
all: it is encoded in memory on each request, to the same bytes.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, Protocol, cast

import brotli
import pyarrow as pa
import zstandard

from data_server.encoders import SLICE_BYTES, encode_result
from data_server.fair_jobs import FairJobs
from data_server.formats import TEXT_FORMATS, ArrowCompression, ResultFormat, weighted_entries
from data_server.growing_files import GrowingFile, GrowingReader
from data_server.recent_keys import RecentKeys
from data_server.warm_files import WARM_WORTH_BYTES, WarmFiles
from shared.errors import ServiceUnavailable, TooManyRequests
from shared.results import (
    CODING_SUFFIXES,
    ResultGone,
    ResultStore,
    result_object_key,
    variant_object_key,
)

# A representation of at most this many bytes (before any content coding) is encoded on each
# request and never stored: encoding it costs less than storing it (a file write, an fsync and a
# quota charge under the organisation's lock), and its bytes, length and ETag are the same each
# time. It also bounds the memory such a request holds.
SMALL_REPRESENTATION_BYTES = 64 * 1024
# A representation is compressed once, while its first client waits, and is mostly read a few
# times after: levels that cost little CPU. The 93 MB JSON of bench/formats_bench.py's 1M rows,
# on the measuring machine: gzip 1 took 0.60 s for 21.3 MB, gzip 6 2.21 s for 18.2 MB; brotli 2
# 0.57 s for 11.2 MB, brotli 5 1.81 s for 8.4 MB; zstd 3 0.29 s for 10.9 MB.
GZIP_LEVEL = 1
ZSTD_LEVEL = 3
BROTLI_QUALITY = 2
# Part of every ETag. Raise it whenever an encoder's bytes change for some result (a value spelled
# differently, a level changed): a representation encoded on each request, or again after its
# storage was refused, must not carry an ETag that named other bytes before, or a cached copy
# would be revalidated (304) and a resumed download spliced from two encodings. (A stored
# representation keeps its bytes; only its ETag changes, which costs a client one refetch.)
ENCODING_REVISION = 5  # 5: text that is not UTF-8 spelled with U+FFFD


class ContentCoding(enum.Enum):
    """``Accept-Encoding`` codings for text formats, in the order preferred on a tie."""

    ZSTD = "zstd"
    BR = "br"
    GZIP = "gzip"
    IDENTITY = "identity"


@dataclass(frozen=True)
class Representation:
    fmt: ResultFormat
    compression: ArrowCompression = ArrowCompression.NONE
    coding: ContentCoding = ContentCoding.IDENTITY

    @property
    def variant(self) -> str:
        """The name of its stored object, from the catalogue in shared/results.py."""
        name = self.fmt.extension
        if self.fmt is ResultFormat.ARROW and self.compression.codec:
            name += f".{self.compression.value}"
        if self.coding is not ContentCoding.IDENTITY:
            name += f".{CODING_SUFFIXES[self.coding.value]}"
        return name

    def etag(self, data_key: str) -> str:
        named = f"{data_key}/{self.variant}/{ENCODING_REVISION}"
        digest = hashlib.sha256(named.encode()).hexdigest()[:32]
        return f'"{digest}"'


def negotiate_coding(accept_encoding: str | None, fmt: ResultFormat) -> ContentCoding:
    """The coding of highest weight in Accept-Encoding for a text format (RFC 9110 §12.5.3),
    ties going to the smaller output; identity for binary formats (Arrow and Parquet compress
    inside the format). Identity is acceptable unless excluded, with the lowest weight a client
    can give, so any coding the client lists beats it unless identity is listed higher. When
    nothing is acceptable (``identity;q=0, *;q=0``), identity is sent all the same, as
    §12.5.3 advises."""
    if fmt not in TEXT_FORMATS or not accept_encoding:
        return ContentCoding.IDENTITY
    weights: dict[str, float] = {}
    for name, weight, _ in weighted_entries(accept_encoding):
        weights.setdefault(name, weight)  # a name listed twice: its first weight

    def weight_of(coding: ContentCoding) -> float:
        implicit = _IMPLICIT_IDENTITY_WEIGHT if coding is ContentCoding.IDENTITY else 0.0
        return weights.get(coding.value, weights.get("*", implicit))

    best = max(ContentCoding, key=weight_of)  # of equals, max keeps the first: the tie order
    return best if weight_of(best) > 0 else ContentCoding.IDENTITY


# Below any weight a client may write (the smallest is 0.001) but above zero.
_IMPLICIT_IDENTITY_WEIGHT = 0.0005


# ---------------------------------------------------------------------------- materialising

# At most this many first encodings run at once in a data server; more wait their turn (their
# requests wait without a thread), each organisation's behind its own and one at most on all but
# one thread (FairJobs). Each running or waiting one holds a scratch file open: an organisation
# may have ENCODINGS_PER_ORGANIZATION of them (beyond: 429), the server ENCODINGS_AT_MOST
# (beyond: 503). Their slices of text (JSON, records, NDJSON, CSV) share the slice threads.
MATERIALISATIONS_AT_ONCE = 8
ENCODINGS_PER_ORGANIZATION = 16
ENCODINGS_AT_MOST = 64


@dataclass(frozen=True)
class EncodingThreads:
    """A data server's threads for encoding: ``jobs`` run first encodings, ``slices`` (None: a
    job encodes alone) encode text slices for them and for row windows."""

    jobs: FairJobs
    slices: Executor | None

    def shutdown(self) -> None:
        self.jobs.shutdown()
        if self.slices is not None:
            self.slices.shutdown(wait=False, cancel_futures=True)
        # Queued encodings will never start and running ones are cut short: no reader waits.
        with _encoding_guard:
            waiting = [growing for _, growing in _encoding.values()]
        for growing in waiting:
            growing.fail(ServiceUnavailable("The data server is shutting down."))


# The encodings in progress in this process, by variant key, with their organisation: a request
# for a variant being encoded follows that encoding instead of starting another.
_encoding: dict[str, tuple[str, GrowingFile]] = {}
_encoding_guard = threading.Lock()
_logger = logging.getLogger(__name__)


def open_representation(
    store: ResultStore,
    data_key: str,
    representation: Representation,
    organization_id: str,
    charge: Callable[[int], bool],
    threads: EncodingThreads,
    warm_files: WarmFiles,
) -> pa.NativeFile | GrowingReader:
    """A random-access reader of the stored representation, or, while it is being encoded (by
    this request, which then starts it, or an earlier one), a reader following that encoding.

    ``charge(size)`` counts a new representation in the organisation's storage quota before it
    is stored; when it refuses (no room), the bytes are served from scratch space this once and
    not kept. The Arrow file is checked first: a purged result is gone even if a variant written
    by a request racing the purge is left over (the orphan sweep removes that). The store is
    never asked anything under the registry's lock (on S3 each question is a request)."""
    source = store.open(result_object_key(data_key))
    key = variant_object_key(data_key, representation.variant)
    try:
        small = _encoded_in_memory(source, key, representation)
        if small is not None:
            return small
        warm = warm_files if _writes_large(representation, source.size()) else None
    finally:
        source.close()
    for look in range(2):
        try:
            return store.open(key)
        except ResultGone:
            pass
        with _encoding_guard:
            if key in _encoding:
                return _encoding[key][1].join()
            if look:  # neither stored nor being encoded, twice: encode it
                growing, reader = _claim(store, key, organization_id, warm)
                break
    if warm is not None:
        warm.refill()
    try:
        threads.jobs.submit(
            organization_id,
            partial(
                _materialise,
                store,
                data_key,
                key,
                representation,
                charge,
                threads.slices,
                growing,
                warm,
            ),
        )
    except RuntimeError as error:  # shutting down: no encoding will start
        _release(key, growing, error)
    return reader


def _writes_large(representation: Representation, source_bytes: int) -> bool:
    """Whether an encoding writes enough to be worth a warm file: text formats without a
    content coding write more than their Arrow source (JSON about 1.4 times it, NDJSON 2.1),
    anything else less."""
    return (
        representation.fmt in TEXT_FORMATS
        and representation.coding is ContentCoding.IDENTITY
        and source_bytes >= WARM_WORTH_BYTES
    )


def _claim(
    store: ResultStore, key: str, organization_id: str, warm_files: WarmFiles | None
) -> tuple[GrowingFile, GrowingReader]:
    """A new encoding of ``key`` and its first reader, registered only once both exist (the
    caller holds the registry's lock); written into a warm file if one is given and ready."""
    writing = [owner for owner, growing in _encoding.values() if not growing.finished]
    if len(writing) >= ENCODINGS_AT_MOST:
        raise ServiceUnavailable(
            "Too many results are being encoded on this data server; retry shortly.",
            code="encoders_busy",
            headers={"Retry-After": "1"},
        )
    if writing.count(organization_id) >= ENCODINGS_PER_ORGANIZATION:
        raise TooManyRequests(
            f"This organisation has {ENCODINGS_PER_ORGANIZATION} results being encoded on this "
            "data server; retry once they are done.",
            code="encoders_busy",
            headers={"Retry-After": "1"},
        )
    path = store.temp_path(f"variant-{os.getpid()}-{os.urandom(6).hex()}")
    growing = GrowingFile(path, prepared=warm_files is not None and warm_files.take_as(path))
    try:
        reader = growing.join()
    except BaseException:  # no descriptor left, say: nothing registered, nothing left behind
        growing.close()
        growing.path.unlink(missing_ok=True)
        raise
    _encoding[key] = (organization_id, growing)
    return growing, reader


def _release(key: str, growing: GrowingFile, error: BaseException | None) -> None:
    """Leaves the registry (new requests look in the store again), tells the readers how the
    encoding ended (if it was not told them already), then closes the writer's file."""
    with _encoding_guard:
        _encoding.pop(key, None)
    if error is None:
        growing.finish()
    else:
        growing.fail(error)
    growing.close()
    growing.path.unlink(missing_ok=True)


def _materialise(
    store: ResultStore,
    data_key: str,
    key: str,
    representation: Representation,
    charge: Callable[[int], bool],
    slices: Executor | None,
    growing: GrowingFile,
    warm_files: WarmFiles | None,
) -> None:
    """Encodes into ``growing`` (its readers follow) and counts it in the quota; then lets the
    readers finish, and only then stores it, if the quota allowed: the fsync that makes it
    durable (0.08 to 0.17 s for 93 to 140 MB on the measuring machine) is no client's wait. Until
    stored it stays in the registry, whole, for the requests that come meanwhile. A large one
    keeps the warm files' filler waiting while it writes."""
    outcome: BaseException | None = RuntimeError("the encoding stopped")  # until it ends
    try:
        with warm_files.writing() if warm_files is not None else nullcontext():
            outcome = _encode(store, data_key, key, representation, slices, growing)
        if outcome is None:
            _finish_then_store(store, key, charge, growing)
    finally:
        _release(key, growing, outcome)


def _finish_then_store(
    store: ResultStore, key: str, charge: Callable[[int], bool], growing: GrowingFile
) -> None:
    """Counts the representation in the quota (a client that has read it sees it counted), lets
    its readers finish, then stores it if the quota took it. (If the count fails, ``_release``
    lets them finish.)"""
    try:
        kept = charge(growing.path.stat().st_size)
        growing.finish()
        if kept:
            store.publish(growing.path, key)
    except Exception:  # the readers have every byte; the next request encodes it again
        _logger.exception("storing %s failed", key)


def _encode(
    store: ResultStore,
    data_key: str,
    key: str,
    representation: Representation,
    slices: Executor | None,
    growing: GrowingFile,
) -> BaseException | None:
    """None once every byte is written, else the error the readers get."""
    begun = False
    try:
        with (
            store.open(result_object_key(data_key)) as source,
            _compressed(growing, representation.coding) as target,
        ):
            for chunk in encode_result(
                source, representation.fmt, compression=representation.compression, pool=slices
            ):
                target.write(chunk)
                if not begun:
                    growing.begin()
                    begun = True
        growing.end_here()
    except ResultGone as error:  # purged meanwhile: the request answers 404
        return error
    except Exception as error:
        _logger.exception("encoding %s failed", key)
        return error
    return None


# Variants that turned out larger than the in-memory limit: served from the store from then on,
# so a small result whose text is large (long repeated values) is encoded in memory only until
# it is known not to fit, not on every request.
_outgrown = RecentKeys(10_000)


def _encoded_in_memory(
    source: pa.NativeFile, key: str, representation: Representation
) -> pa.BufferReader | None:
    """The representation of a small result, encoded in memory; None when the stored result
    itself is larger than ``SMALL_REPRESENTATION_BYTES`` or the representation outgrows it
    (checked after every slice of about that size, so stopping costs little; remembered)."""
    if source.size() > SMALL_REPRESENTATION_BYTES or key in _outgrown:
        return None
    # Read whole first: Arrow opens a file's IPC footer through its I/O threads, 80 µs for a
    # one-row result against 10 from memory.
    source = pa.BufferReader(source.read())
    raw = io.BytesIO()
    encoded = 0
    # Small slices for text, whose bytes do not depend on them and which can outgrow its source
    # many times over; Arrow and Parquet keep the stored layout, which their bytes depend on.
    text = representation.fmt in TEXT_FORMATS
    with _compressed(raw, representation.coding) as target:
        for chunk in encode_result(
            source,
            representation.fmt,
            compression=representation.compression,
            slice_bytes=SMALL_REPRESENTATION_BYTES if text else SLICE_BYTES,
        ):
            encoded += len(chunk)
            if encoded > SMALL_REPRESENTATION_BYTES:
                _outgrown.add(key)
                return None
            target.write(chunk)
    return pa.BufferReader(raw.getvalue())


@contextmanager
def _compressed(raw: _Writable, coding: ContentCoding) -> Iterator[Any]:
    """A writer that compresses into ``raw``; identical input gives identical bytes. (Publishing
    fsyncs the file.)"""
    if coding is ContentCoding.GZIP:
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
        ) as out:
            yield out
    elif coding is ContentCoding.ZSTD:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        # stream_writer calls only write and flush, whatever its stub asks for
        with compressor.stream_writer(cast(IO[bytes], raw), closefd=False) as out:
            yield out
    elif coding is ContentCoding.BR:
        writer = _BrotliWriter(raw)
        yield writer
        writer.finish()
    else:
        yield raw


class _Writable(Protocol):
    def write(self, data: Any, /) -> int: ...

    def flush(self) -> None: ...


class _BrotliWriter:
    def __init__(self, raw: _Writable) -> None:
        self._raw = raw
        self._compressor = brotli.Compressor(quality=BROTLI_QUALITY)

    def write(self, data: Any) -> None:
        self._raw.write(self._compressor.process(bytes(data)))

    def finish(self) -> None:
        self._raw.write(self._compressor.finish())
