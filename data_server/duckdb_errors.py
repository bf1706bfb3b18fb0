"""DuckDB's errors as DuckDB raises them, wherever they arrive in another form.

DuckDB's Arrow stream hands an error to pyarrow as its text alone ("Invalid Input Error: …"),
which pyarrow raises as an OSError; and the binding raises the decoding's error for a message
that is not UTF-8. Either way the text's kind names the exception DuckDB meant, which the engine
classifies and reports like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

_DUCKDB_ERRORS: dict[str, type[duckdb.Error]] = {
    name.removesuffix("Exception").lower(): kind
    for name, kind in vars(duckdb).items()
    if name.endswith("Exception") and isinstance(kind, type) and issubclass(kind, duckdb.Error)
}


def duckdb_error(message: str) -> duckdb.Error:
    """The DuckDB exception a message's kind ("Conversion Error: …") names."""
    kind, _, _ = message.partition(" Error: ")
    return _DUCKDB_ERRORS.get(kind.replace(" ", "").lower(), duckdb.Error)(message)


@contextmanager
def undecodable_as_duckdb_error() -> Iterator[None]:
    """A DuckDB error whose message is not UTF-8 raised as the DuckDB error it is: the message
    quotes a value the query made (``error(printf('%c', 255))``, a failed cast of such text) or
    a remote server's words in another encoding, and the binding, failing to decode it, raises
    the decoding's error instead. Its text keeps U+FFFD where the bytes were not UTF-8, as
    pyarrow's does for an error while batches stream. A decoding error that is not a DuckDB
    message goes on as it was."""
    try:
        yield
    except UnicodeDecodeError as exc:
        text = exc.object.decode("utf-8", "replace") if isinstance(exc.object, bytes) else ""
        error = duckdb_error(text)
        if type(error) is duckdb.Error:  # no DuckDB error's kind: not its message
            raise
        raise error from None
